"""MedNeXt-v2 for CT and MR segmentation: network, inference, fine-tuning and model catalog.

Imports are lazy so that the Slicer modules can import this package (for the catalog and the
progress format) before torch is installed.
"""
from importlib import import_module

__version__ = "0.1.0"
# Help texts and messages point here, not to docs/ files, which a pip-installed engine lacks.
PROJECT_URL = "https://github.com/mednextv2/SlicerMedNeXtV2"
MODELS_DOC_URL = f"{PROJECT_URL}/blob/main/docs/models.md"

_EXPORTS = {
    "MedNeXtConfig": "mednextv2.network",
    "MedNeXt": "mednextv2.network",
    "from_official_state_dict": "mednextv2.network",
    "upkern": "mednextv2.network",
    "load_bundle": "mednextv2.bundle",
    "Bundle": "mednextv2.bundle",
    "BundleSpec": "mednextv2.bundle_spec",
    "segment": "mednextv2.inference.pipeline",
    "segment_with_uncertainty": "mednextv2.inference.pipeline",
    "SegmentOptions": "mednextv2.inference.options",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mednextv2' has no attribute {name!r}")


__all__ = sorted(_EXPORTS) + ["__version__", "PROJECT_URL", "MODELS_DOC_URL"]
