"""Validation on held-out cases with the segment pipeline's sliding-window predictor, on the network grid."""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from mednextv2.inference.sliding_window import SlidingWindowPredictor
from mednextv2.train.preprocessed import CachedCase

log = logging.getLogger(__name__)


def dice_per_class(prediction: np.ndarray, target: np.ndarray, n_classes: int) -> List[float]:
    """Dice of classes 1..n-1; NaN where both are empty (undefined, left out of means)."""
    out = []
    for c in range(1, n_classes):
        p, t = prediction == c, target == c
        denominator = int(p.sum()) + int(t.sum())
        out.append(float("nan") if denominator == 0 else 2.0 * int(np.logical_and(p, t).sum()) / denominator)
    return out


def nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


WINDOW_PATCHES = 2  # windows mode: a box of this many patches per axis, tiled without overlap (<= 8 tiles)


def foreground_window(label: np.ndarray, patch: Sequence[int]) -> Tuple[slice, ...]:
    """A box of up to WINDOW_PATCHES patches per axis, centred on the labelled voxels (the middle if none)."""
    found = np.nonzero(label)
    box = []
    for axis, (size, p) in enumerate(zip(label.shape, patch)):
        width = min(size, WINDOW_PATCHES * int(p))
        centre = int((found[axis].min() + found[axis].max()) // 2) if found[0].size else size // 2
        start = min(max(0, centre - width // 2), size - width)
        box.append(slice(start, start + width))
    return tuple(box)


def validate(model: nn.Module, cases: Sequence[CachedCase], n_classes: int, patch: Sequence[int],
             device: torch.device, label_names: Sequence[str], windows: bool = False) -> Dict[str, float]:
    """Mean Dice per label name over `cases` (each case's Dice first, nnU-Net style).

    `windows`: each case is judged on a box around its foreground (foreground_window), tiled
    without overlap, so the cost per case is at most 8 forward passes whatever the scan's size;
    time-budgeted training uses it, whole volumes at step 0.5 otherwise.
    """
    was_training, had_ds = model.training, model.deep_supervision
    model.eval()
    model.set_deep_supervision(False)
    try:
        predictor = SlidingWindowPredictor([model], n_classes, patch, step=1.0 if windows else 0.5, mirror_axes=(),
                                           device=device)
        per_case = []
        for case in cases:
            label = np.asarray(case.label())
            box = foreground_window(label, patch) if windows else (slice(None),) * 3
            image = case.image()[(slice(None),) + box]
            prob = predictor.predict(np.array(image))  # a writable copy of the memory map
            prediction = prob.float().argmax(0).numpy()
            per_case.append(dice_per_class(prediction, label[box], n_classes))
    finally:
        model.set_deep_supervision(had_ds)
        model.train(was_training)
    table = np.array(per_case, dtype=float).reshape(len(per_case), n_classes - 1)
    return {name: nanmean(table[:, i]) for i, name in enumerate(label_names)}

