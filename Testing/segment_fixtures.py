"""Builders shared by the segment/bundle/geometry/export tests: tiny bundles whose output is known.

`threshold_bundle` makes a real MedNeXt (the production network class) whose weights compute a
known function of intensity: every block's output conv and every resampling branch is zeroed,
so the U-Net reduces to head(stem(x)) - a per-voxel linear function - and the labels are
intensity thresholds. The right answer for any image is then known in advance.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from mednextv2.bundle import Bundle
from mednextv2.network import MedNeXt, MedNeXtConfig

SHARPNESS = 20.0  # logit slope per normalised intensity unit


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors on a shared 2-core box: OpenMP threads spin-waiting on each other make small
    ops ~100x slower, so the tests that import this run torch single-threaded (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(n_classes: int = 2, in_channels: int = 1) -> MedNeXtConfig:
    return MedNeXtConfig(in_channels=in_channels, n_channels=2, n_classes=n_classes, exp_r=1, kernel_size=3,
                         block_counts=1, grn=True, deep_supervision=False)


def threshold_state_dict(config: MedNeXtConfig, thresholds: Sequence[float]) -> Dict[str, torch.Tensor]:
    """Weights giving label c where thresholds[c-1] < x < thresholds[c] (x = normalised channel 0)."""
    model = MedNeXt(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.stem.weight[0, 0] = 1.0
        # class c logit = SHARPNESS * (c * x - sum(thresholds[:c])): piecewise-maximal between thresholds
        w = model.out_0.conv_out.weight  # (C_in, classes, 1, 1, 1)
        for c in range(config.n_classes):
            w[0, c] = SHARPNESS * c
            model.out_0.conv_out.bias[c] = -SHARPNESS * float(sum(thresholds[:c]))
    return {k: v.clone() for k, v in model.state_dict().items()}


def bundle_spec(config: MedNeXtConfig, *, patch=(16, 32, 32), target_spacing=(2.0, 1.5, 1.5),
                normalization=None, mirror_axes=(0, 1, 2), crop_to_nonzero=False, names=None) -> dict:
    n = config.n_classes
    names = names or [f"structure{i}" for i in range(1, n)]
    colors = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]]
    labels = [{"value": i, "name": names[i - 1], "color": colors[(i - 1) % len(colors)]} for i in range(1, n)]
    labels[0]["terminology"] = {"category": ["SCT", "49755003", "Morphologically Altered Structure"],
                                "type": ["SCT", "108369006", "Neoplasm"]}
    return {
        "format_version": 1, "id": "known-threshold", "title": "Known threshold function",
        "description": "test bundle", "network": config.to_dict(),
        "labels": labels,
        "channels": [{"name": f"ch{i}", "modality": "CT"} for i in range(config.in_channels)],
        "preprocessing": {"axis_order": "zyx", "target_spacing": list(target_spacing) if target_spacing else None,
                          "crop_to_nonzero": crop_to_nonzero,
                          "normalization": normalization or [{"scheme": "ct", "clip": [-1000, 1000], "mean": 0.0,
                                                              "std": 100.0}] * config.in_channels},
        "inference": {"patch_size": list(patch), "step": 0.5, "mirror_axes": list(mirror_axes)},
        "provenance": {"base_model": None, "training_data": "none", "metrics": {}, "date": "2026-11-27"},
    }


def threshold_bundle(thresholds_hu: Sequence[float] = (300.0,), folds: int = 1, **spec_kwargs) -> Bundle:
    """In-memory bundle labelling HU > thresholds (ct normalisation: mean 0, std 100)."""
    config = tiny_config(n_classes=len(thresholds_hu) + 1)
    spec = bundle_spec(config, **spec_kwargs)
    norm = spec["preprocessing"]["normalization"][0]
    t = [(h - norm.get("mean", 0.0)) / norm.get("std", 1.0) for h in thresholds_hu]
    return Bundle.create(spec, [threshold_state_dict(config, t)] * folds)


def make_image(array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
               direction: Optional[np.ndarray] = None) -> sitk.Image:
    """array in (z, y, x); spacing/origin in SimpleITK (x, y, z) order."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    if direction is not None:
        image.SetDirection([float(v) for v in np.asarray(direction, dtype=float).ravel()])
    return image


def write_image(image: sitk.Image, path: Path, compress: bool = False) -> Path:
    """Writes `image` to `path` (format from the extension) and returns `path`, for use inline."""
    sitk.WriteImage(image, str(path), compress)
    return path


def world_points(image: sitk.Image) -> np.ndarray:
    """World (x, y, z) of every voxel, shape (z, y, x, 3)."""
    size = image.GetSize()
    k, j, i = np.meshgrid(np.arange(size[2]), np.arange(size[1]), np.arange(size[0]), indexing="ij")
    idx = np.stack([i, j, k], axis=-1).astype(float)
    d = np.array(image.GetDirection()).reshape(3, 3)
    return np.array(image.GetOrigin()) + (idx * np.array(image.GetSpacing())) @ d.T


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix from angles in degrees about x, then y, then z."""
    a, b, c = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _filter(labels: np.ndarray, width: int, reduce) -> np.ndarray:
    """Separable max/min over a (2*width+1)^3 box, edges replicated (numpy only)."""
    out = labels
    for axis in range(labels.ndim):
        padded = np.pad(out, [(width, width) if a == axis else (0, 0) for a in range(labels.ndim)], mode="edge")
        n = out.shape[axis]
        out = reduce([np.take(padded, np.arange(s, s + n), axis=axis) for s in range(2 * width + 1)], axis=0)
    return out


def boundary(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """Voxels whose (2*width+1)^3 neighbourhood holds more than one label."""
    return _filter(labels, width, np.max) != _filter(labels, width, np.min)


def save_bundle(bundle: Bundle, folder: Path, name: str = "model") -> Path:
    return bundle.save(Path(folder) / name)
