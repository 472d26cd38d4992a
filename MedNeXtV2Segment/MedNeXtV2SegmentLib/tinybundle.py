"""A tiny model bundle with a known answer, for the Slicer self-test and the pytest end-to-end test.

The network is real (a 4-channel MedNeXt-v2 with one block per stage), but its output head is
rigged: zero weights and a bias that makes label 2 win everywhere. So the expected segmentation
is known exactly (every voxel 'tissue', 'lesion' empty) without training, and any geometry or
label-handling error shows up as a mismatch.
"""
from __future__ import annotations

from pathlib import Path

LABELS = [
    {"value": 1, "name": "lesion", "color": [255, 0, 0],
     "terminology": {"category": ["SCT", "49755003", "Morphologically Altered Structure"],
                     "type": ["SCT", "108369006", "Neoplasm"]}},
    {"value": 2, "name": "tissue", "color": [0, 200, 100],
     "terminology": {"category": ["SCT", "85756007", "Tissue"], "type": ["SCT", "85756007", "Tissue"]}},
]


def make_tiny_bundle(folder: Path, bundle_id: str = "selftest-tiny") -> Path:
    """The tiny bundle saved as `folder/bundle_id`."""
    return tiny_bundle(bundle_id).save(Path(folder) / bundle_id)


def tiny_bundle(bundle_id: str = "selftest-tiny"):
    """The tiny bundle in memory (a `mednextv2.bundle.Bundle`)."""
    import torch
    from mednextv2.bundle import (Bundle, BundleSpec, Channel, InferenceDefaults, Label, NetworkSpec, Normalization,
                                  PreprocessingPlan)
    from mednextv2.network import MedNeXt, MedNeXtConfig

    config = MedNeXtConfig(in_channels=1, n_channels=4, n_classes=3, exp_r=2, kernel_size=3, block_counts=1,
                           grn=True, deep_supervision=False)
    state = MedNeXt(config).state_dict()
    heads = [k for k in state if k.startswith("out_0.") and k.endswith(".bias") and tuple(state[k].shape) == (3,)]
    if len(heads) != 1:
        raise RuntimeError(f"cannot find the single output head bias among {list(state)[-4:]}")
    weight = heads[0][: -len(".bias")] + ".weight"
    state[weight] = torch.zeros_like(state[weight])
    state[heads[0]] = torch.tensor([-5.0, -5.0, 5.0])
    spec = BundleSpec(id=bundle_id, title="Self-test tiny model", description="rigged head: label 2 everywhere",
                      network=NetworkSpec.from_config(config),
                      labels=tuple(Label.from_json(d) for d in LABELS),
                      channels=(Channel("CT", "CT"),),
                      preprocessing=PreprocessingPlan((3.0, 1.5, 1.5), (Normalization("zscore"),), crop_to_nonzero=False),
                      inference=InferenceDefaults((16, 32, 32), 0.5, (0, 1, 2)))
    return Bundle.create(spec, [state])
