"""AdamW with an optional slower (or frozen) encoder, and the warm-up + poly learning-rate curve.

eps is 1e-4: the MedNeXt authors saw NaN losses with 1e-8 under mixed precision.
"""
from __future__ import annotations

import logging
from typing import List

import torch
from torch import nn

log = logging.getLogger(__name__)

EPS = 1e-4
WEIGHT_DECAY = 3e-5
POLY_EXPONENT = 0.9
WARMUP_FRACTION = 0.05  # the paper warms up for 50 of 1000 epochs when fine-tuning
ENCODER_PREFIXES = ("stem.", "enc_block_", "down_")


def is_encoder(name: str) -> bool:
    return name.startswith(ENCODER_PREFIXES)


def make_optimizer(model: nn.Module, lr: float, encoder_lr_scale: float = 1.0) -> torch.optim.AdamW:
    """encoder_lr_scale 0 freezes the encoder (no gradients at all), 1 is full fine-tuning."""
    encoder: List[nn.Parameter] = []
    rest: List[nn.Parameter] = []
    for name, param in model.named_parameters():
        (encoder if is_encoder(name) else rest).append(param)
    groups = [{"params": rest, "lr": lr, "lr_scale": 1.0}]
    if encoder_lr_scale > 0:
        groups.append({"params": encoder, "lr": lr * encoder_lr_scale, "lr_scale": float(encoder_lr_scale)})
    else:
        for param in encoder:
            param.requires_grad_(False)
        log.info("encoder frozen: %d of %d parameters train", sum(p.numel() for p in rest),
                 sum(p.numel() for p in rest + encoder))
    return torch.optim.AdamW(groups, lr=lr, weight_decay=WEIGHT_DECAY, eps=EPS)


def lr_factor(progress: float, warmup: float = WARMUP_FRACTION) -> float:
    """Learning-rate multiplier at `progress` in [0, 1] of the training: linear warm-up, then poly 0.9."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 0.01)
    rest = (progress - warmup) / max(1.0 - warmup, 1e-8)
    return max(1.0 - rest, 0.0) ** POLY_EXPONENT


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group.get("lr_scale", 1.0)
