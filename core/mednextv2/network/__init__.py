"""The MedNeXt-v2 network: config and presets, blocks, model, official checkpoint import.

The config and its presets are plain Python and imported at once: the Slicer modules read the
presets at start-up, before torch may be installed. The torch parts load on first use.
"""
from importlib import import_module

from .config import DIVISOR, PRESETS, MedNeXtConfig

_TORCH_EXPORTS = {
    "STAGES": ".model",
    "MedNeXt": ".model",
    "config_from_state_dict": ".official",
    "from_official_state_dict": ".official",
    "official_state_dict": ".official",
    "upkern": ".official",
}


def __getattr__(name):
    if name in _TORCH_EXPORTS:
        return getattr(import_module(_TORCH_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MedNeXtConfig", "PRESETS", "MedNeXt", "DIVISOR", "STAGES", "from_official_state_dict",
           "config_from_state_dict", "official_state_dict", "upkern"]
