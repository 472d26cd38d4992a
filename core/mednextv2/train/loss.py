"""Dice + cross-entropy (1:1) over the deep-supervision outputs.

Weights follow the official MedNeXt recipe: proportional to 1/2^i over the five outputs,
normalised to sum 1. Dice is nnU-Net's batch Dice over the foreground classes, in fp32.
"""
from __future__ import annotations

from typing import List, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

SMOOTH = 1e-5


def deep_supervision_weights(n_outputs: int) -> List[float]:
    raw = [1.0 / 2 ** i for i in range(n_outputs)]
    total = sum(raw)
    return [w / total for w in raw]


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean foreground soft Dice, summed over the whole batch (batch Dice)."""
    probs = torch.softmax(logits.float(), dim=1)
    onehot = torch.zeros_like(probs).scatter_(1, target, 1.0)
    dims = (0,) + tuple(range(2, probs.dim()))
    intersect = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersect + SMOOTH) / (denominator + SMOOTH)
    return 1.0 - dice[1:].mean()


class DiceCELoss(nn.Module):
    def __init__(self, n_outputs: int = 5) -> None:
        super().__init__()
        self.weights = deep_supervision_weights(n_outputs)

    def forward(self, outputs: Union[torch.Tensor, Sequence[torch.Tensor]], target: torch.Tensor) -> torch.Tensor:
        """outputs: full-resolution logits or the deep-supervision list; target (B, 1, *patch) long."""
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        weights = self.weights[: len(outputs)]
        total = sum(weights)
        loss = outputs[0].new_zeros((), dtype=torch.float32)
        for weight, logits in zip(weights, outputs):
            t = target
            if t.shape[2:] != logits.shape[2:]:
                t = F.interpolate(target.float(), size=logits.shape[2:], mode="nearest").long()
            ce = F.cross_entropy(logits.float(), t[:, 0])
            loss = loss + (weight / total) * (ce + soft_dice_loss(logits, t))
        return loss
