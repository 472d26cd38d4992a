"""Training plan: target spacing, patch size, normalization, network and label table.

From scratch the plan follows nnU-Net's rules on the dataset fingerprint. When fine-tuning, the
base bundle's preprocessing is kept (its weights were trained with that normalization) and only
the label head changes: labels whose names match the base model reuse its head rows.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mednextv2.bundle_spec import (BundleSpec, InferenceDefaults, Label, Normalization, PreprocessingPlan, Resampling,
                                   default_color)
from mednextv2.errors import InputError
from mednextv2.inference.preprocessing import anisotropic_axis
from mednextv2.network import DIVISOR, MedNeXtConfig
from mednextv2.train.options import check_patch
from mednextv2.train.fingerprint import Fingerprint

log = logging.getLogger(__name__)

CROP_GAIN = 0.75  # crop to non-zero when that keeps at most 3/4 of the voxels (nnU-Net's rule)
# Patch voxel budgets where memory cannot be measured: time, not memory, is the limit there. A CPU
# step costs about the same per voxel at any patch size (v2-tiny, batch 2, 2 cores: 0.3 s at 32^3,
# 0.76 s at 48^3, 2.4 s at 64^3), so small patches buy many more, more varied steps per minute; in
# 8 CPU minutes 32^3 reached a clearly higher held-out Dice than 48^3 or 64^3 (docs/benchmarks.md, bench_train).
VOXEL_BUDGET = {"cpu": 32 ** 3, "mps": 96 ** 3}
MAX_PATCH = 192  # the paper's fine-tuning context


@dataclass(frozen=True)
class LabelSpec:
    value: int  # value in the training label maps
    name: str
    color: Tuple[int, int, int]
    terminology: Optional[dict] = None
    base_row: Optional[int] = None  # head row of the base model this label starts from


@dataclass(frozen=True)
class TrainingPlan:
    network: dict  # MedNeXtConfig.to_dict()
    target_spacing: Optional[Tuple[float, float, float]]  # (z, y, x) mm; None keeps each image's (a base's choice)
    patch_size: Tuple[int, int, int]
    batch_size: int
    crop_to_nonzero: bool
    normalization: Tuple[dict, ...]  # one per channel, bundle format
    channels: Tuple[dict, ...]  # {"name", "modality"} per channel
    labels: Tuple[LabelSpec, ...]  # head rows 1..n-1 in order
    mirror_axes: Tuple[int, ...] = (0, 1, 2)
    base_model: Optional[str] = None
    orientation: str = "LPS"  # see preprocessing.py: a base model's choice is kept
    extra: dict = field(default_factory=dict)
    resampling: Optional[dict] = None  # bundle form; a base model's choice is kept, else linear (None)

    @property
    def config(self) -> MedNeXtConfig:
        return MedNeXtConfig.from_dict(self.network)

    def preprocessing_plan(self) -> PreprocessingPlan:
        """The bundle's preprocessing section; the segment pipeline reads the same, so training sees what inference sees."""
        return PreprocessingPlan(self.target_spacing, tuple(Normalization.from_json(n) for n in self.normalization),
                                 self.crop_to_nonzero, self.orientation,
                                 Resampling.from_json(self.resampling) if self.resampling else None)

    def inference_defaults(self) -> InferenceDefaults:
        return InferenceDefaults(self.patch_size, 0.5, self.mirror_axes)

    def bundle_labels(self) -> Tuple[Label, ...]:
        """Head rows 1..n-1 as bundle labels (the dataset's own values are only used for training)."""
        return tuple(Label(i, spec.name, spec.color, spec.terminology) for i, spec in enumerate(self.labels, start=1))

    def label_rows(self) -> List[Tuple[int, int]]:
        """(dataset label value, head row) pairs, by value."""
        return sorted((spec.value, row) for row, spec in enumerate(self.labels, start=1))

    def map_labels(self, values: np.ndarray) -> np.ndarray:
        """Dataset label values -> head rows (uint8); unlisted values are background. A sorted
        search, not a table indexed by value: a value of 2**40 costs nothing."""
        pairs = np.array(self.label_rows(), dtype=np.int64).reshape(-1, 2)
        values = np.asarray(values).astype(np.int64, copy=False)
        at = np.clip(np.searchsorted(pairs[:, 0], values), 0, len(pairs) - 1)
        return np.where(pairs[at, 0] == values, pairs[at, 1], 0).astype(np.uint8)


def target_spacing(fp: Fingerprint) -> Tuple[float, float, float]:
    spacings = np.array(fp.spacings)
    target = np.median(spacings, axis=0)
    coarse = anisotropic_axis(target)
    if coarse is not None:  # nnU-Net: the coarse axis uses the 10th percentile spacing
        target[coarse] = np.percentile(spacings[:, coarse], 10)
    return tuple(float(s) for s in target)


def guess_modality(given: str, stats) -> str:
    if given:
        return "CT" if given.strip().upper() == "CT" else "MR"
    # Hounsfield units: air at -1000 and foreground reaching well below zero.
    return "CT" if stats.minimum <= -500 and stats.p00_5 < 0 else "MR"


def normalization_for(modality: str, stats) -> dict:
    if modality == "CT":
        return {"scheme": "ct", "clip": [round(stats.p00_5, 3), round(stats.p99_5, 3)],
                "mean": round(stats.mean, 4), "std": round(max(stats.std, 1e-3), 4)}
    return {"scheme": "zscore"}


def _round_patch(shape: Sequence[float]) -> List[int]:
    return [int(max(DIVISOR, min(MAX_PATCH, DIVISOR * np.ceil(s / DIVISOR)))) for s in shape]


def fit_patch(median_shape: Sequence[float], spacing: Sequence[float], voxel_budget: int) -> Tuple[int, int, int]:
    """The median image shape (rounded up to multiples of 16), shrunk until it fits the budget.

    The axis with the largest physical extent shrinks first, so the patch stays as isotropic in
    millimetres as the data allows (nnU-Net's rule).
    """
    patch = _round_patch(median_shape)
    while int(np.prod(patch)) > voxel_budget:
        extent = [p * s if p > DIVISOR else -1 for p, s in zip(patch, spacing)]
        axis = int(np.argmax(extent))
        if patch[axis] <= DIVISOR:
            break
        patch[axis] -= DIVISOR
    return tuple(patch)


def _norm_name(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def map_labels(dataset_labels: Dict[int, str], base_labels: Sequence[dict] = ()) -> Tuple[LabelSpec, ...]:
    """Dataset labels in value order; each one named like a base label keeps that label's head row."""
    base_by_name = {_norm_name(b["name"]): (row, b) for row, b in enumerate(base_labels, start=1)}
    specs = []
    for value, name in sorted(dataset_labels.items()):
        hit = base_by_name.get(_norm_name(name))
        if hit:
            row, base = hit
            specs.append(LabelSpec(value, name, tuple(base.get("color", default_color(value))),
                                   base.get("terminology"), row))
        else:
            specs.append(LabelSpec(value, name, default_color(value)))
    if base_labels:
        reused = [s.name for s in specs if s.base_row]
        log.info("labels reusing the base model's head rows: %s; new: %s", reused or "none",
                 [s.name for s in specs if not s.base_row] or "none")
    return tuple(specs)


def plan_from_scratch(fp: Fingerprint, labels: Dict[int, str], channel_modalities: Sequence[str], preset: str,
                      device_type: str, spacing: Optional[Sequence[float]] = None,
                      patch: Optional[Sequence[int]] = None, voxel_budget: Optional[int] = None,
                      batch_size: int = 2) -> TrainingPlan:
    spacing = _check_spacing(spacing) if spacing else target_spacing(fp)
    crop = bool(np.median([np.prod(n) / np.prod(s) for n, s in zip(fp.nonzero_sizes, fp.sizes)]) <= CROP_GAIN)
    sizes = np.array(fp.nonzero_sizes if crop else fp.sizes, dtype=float)
    physical = sizes * np.array(fp.spacings)
    median_shape = np.median(physical, axis=0) / np.array(spacing)
    budget = voxel_budget or VOXEL_BUDGET.get(device_type, 128 ** 3)
    patch = check_patch(patch) if patch else fit_patch(median_shape, spacing, budget)
    modalities = [guess_modality(m, s) for m, s in zip(list(channel_modalities) + [""] * len(fp.channels), fp.channels)]
    specs = map_labels(labels)
    cfg = MedNeXtConfig.preset(preset, in_channels=len(fp.channels), n_classes=len(specs) + 1)
    plan = TrainingPlan(network=cfg.to_dict(), target_spacing=spacing, patch_size=patch, batch_size=batch_size,
                crop_to_nonzero=crop, normalization=tuple(normalization_for(m, s) for m, s in zip(modalities, fp.channels)),
                channels=tuple({"name": f"{m} {i}" if len(modalities) > 1 else m, "modality": m} for i, m in enumerate(modalities)),
                labels=specs, extra={"preset": preset})
    log.info("plan: spacing %s mm, patch %s, crop to non-zero %s, normalization %s", spacing, patch, crop,
             [n["scheme"] for n in plan.normalization])
    return plan


def plan_from_base(base: BundleSpec, labels: Dict[int, str], n_channels: int,
                   patch: Optional[Sequence[int]] = None, spacing: Optional[Sequence[float]] = None,
                   batch_size: int = 2) -> TrainingPlan:
    """Keep the base bundle's preprocessing; only the head's label rows change."""
    if base.network.in_channels != n_channels:
        raise InputError(f"base model {base.id} takes {base.network.in_channels} channel(s) but the dataset has {n_channels}")
    pre, inf = base.preprocessing, base.inference
    specs = map_labels(labels, [lab.to_json() for lab in base.labels])
    if spacing:
        log.warning("--spacing overrides the base model's target spacing %s", pre.target_spacing)
    network = base.network.config(n_classes=len(specs) + 1, deep_supervision=True)
    # augment on the axes every fold mirrors (an nnU-Net import's folds may differ)
    mirror_axes = tuple(sorted(set.intersection(*map(set, inf.mirror_axes_per_fold(max(1, len(base.weights)))))))
    return TrainingPlan(network=network.to_dict(),
                target_spacing=_check_spacing(spacing) if spacing else pre.target_spacing,
                patch_size=check_patch(patch) if patch else inf.patch_size, batch_size=batch_size,
                crop_to_nonzero=pre.crop_to_nonzero,
                normalization=tuple(n.to_json() for n in pre.normalization),
                channels=tuple(c.to_json() for c in base.channels), labels=specs,
                mirror_axes=mirror_axes, base_model=base.id, orientation=pre.orientation,
                resampling=pre.resampling.to_json() if pre.resampling else None)


# AMAES's preprocessing (Yucca's defaults as their pretraining used them): RAS, 1 mm isotropic,
# crop to the non-zero box, Yucca's volume z-norm rescaled to [0, 1], cubic spline over all axes.
AMAES_SPACING = (1.0, 1.0, 1.0)
AMAES_NORMALIZATION = {"scheme": "volume_znorm", "upper_quantile": 0.99, "rescale": [0.0, 1.0]}
AMAES_RESAMPLING = {"data": {"order": 3, "order_z": 0, "force_separate_z": False},
                    "probabilities": {"order": 1, "order_z": 0, "force_separate_z": False}}


def plan_from_amaes(encoder, fp: Fingerprint, labels: Dict[int, str], device_type: str,
                    patch: Optional[Sequence[int]] = None, spacing: Optional[Sequence[float]] = None,
                    voxel_budget: Optional[int] = None, batch_size: int = 2) -> TrainingPlan:
    """Fine-tune an AMAES encoder (`mednextv2.store.amaes`) with the preprocessing it was pretrained on.

    Its arrays are in RAS (x, y, z) order: the patch follows the dataset's median extent in that order."""
    if encoder.in_channels != len(fp.channels):
        raise InputError(f"--base {encoder.file_name}: the AMAES encoder takes {encoder.in_channels} channel(s) "
                         f"but the dataset has {len(fp.channels)}")
    if spacing:
        log.warning("--spacing overrides the 1 mm isotropic spacing the AMAES encoder was pretrained on")
    spacing = _check_spacing(spacing) if spacing else AMAES_SPACING
    physical = np.array(fp.nonzero_sizes, dtype=float) * np.array(fp.spacings)
    median_shape = (np.median(physical, axis=0)[::-1]) / np.array(spacing)  # LPS (z, y, x) -> RAS (x, y, z)
    patch = check_patch(patch) if patch else fit_patch(median_shape, spacing, voxel_budget or
                                                       VOXEL_BUDGET.get(device_type, 128 ** 3))
    specs = map_labels(labels)
    network = encoder.network_config(n_classes=len(specs) + 1, deep_supervision=True)
    plan = TrainingPlan(network=network.to_dict(), target_spacing=spacing, patch_size=patch, batch_size=batch_size,
                crop_to_nonzero=True, normalization=tuple(dict(AMAES_NORMALIZATION) for _ in fp.channels),
                channels=tuple({"name": f"MR {i}" if len(fp.channels) > 1 else "MR", "modality": "MR"}
                               for i in range(len(fp.channels))),
                labels=specs, base_model=f"amaes:{encoder.file_name}", orientation="RAS",
                resampling=dict(AMAES_RESAMPLING))
    log.info("plan from the AMAES %s encoder: RAS, spacing %s mm, patch %s, Yucca's volume z-norm to [0, 1]",
             encoder.variant, spacing, patch)
    return plan


def _spacing_or_none(spacing) -> Optional[Tuple[float, float, float]]:
    return None if spacing is None else tuple(float(s) for s in spacing)


def _check_spacing(spacing: Sequence[float]) -> Tuple[float, float, float]:
    """A given --spacing: three finite sizes > 0 (NaN would reach the resampler and fail there with a traceback)."""
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise InputError(f"--spacing must be three finite sizes > 0 in mm (z y x), got {list(values)}")
    return values


def plan_to_dict(plan: TrainingPlan) -> dict:
    out = asdict(plan)
    out["labels"] = [asdict(s) for s in plan.labels]
    return out


def plan_from_dict(data: dict) -> TrainingPlan:
    data = dict(data)
    data["labels"] = tuple(LabelSpec(**{**s, "color": tuple(s["color"])}) for s in data["labels"])
    for key in ("patch_size", "normalization", "channels", "mirror_axes"):
        data[key] = tuple(data[key])
    data["target_spacing"] = _spacing_or_none(data["target_spacing"])
    return TrainingPlan(**data)
