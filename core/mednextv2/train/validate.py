"""Validation on held-out cases with the segment pipeline's sliding-window predictor, on the network grid."""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import nn

from mednextv2.sliding_window import SlidingWindowPredictor
from mednextv2.train.cache import CachedCase

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


def validate(model: nn.Module, cases: Sequence[CachedCase], n_classes: int, patch: Sequence[int],
             device: torch.device, label_names: Sequence[str]) -> Dict[str, float]:
    """Mean Dice per label name over `cases` (each case's Dice first, nnU-Net style)."""
    was_training, had_ds = model.training, model.deep_supervision
    model.eval()
    model.set_deep_supervision(False)
    try:
        predictor = SlidingWindowPredictor([model], n_classes, patch, step=0.5, mirror_axes=(), device=device)
        per_case = []
        for case in cases:
            prob = predictor.predict(np.array(case.image()))  # a writable copy of the memory map
            prediction = prob.float().argmax(0).numpy()
            per_case.append(dice_per_class(prediction, np.asarray(case.label()), n_classes))
    finally:
        model.set_deep_supervision(had_ds)
        model.train(was_training)
    table = np.array(per_case, dtype=float).reshape(len(per_case), n_classes - 1)
    return {name: nanmean(table[:, i]) for i, name in enumerate(label_names)}
