"""How many patch voxels fit in the GPU's memory: measured, not guessed.

One forward/backward at two small patch sizes gives the memory per voxel and the fixed part
(weights, optimizer, workspace); the budget is what fits in 80% of the free memory.
"""
from __future__ import annotations

import logging

import torch

from mednextv2.devices import autocast_dtype
from mednextv2.network import MedNeXt, MedNeXtConfig
from mednextv2.train.loss import DiceCELoss

log = logging.getLogger(__name__)

PROBE_SIZES = (32, 64)
USABLE_FRACTION = 0.8


def _peak_bytes(model: MedNeXt, side: int, in_channels: int, batch: int, device: torch.device) -> int:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    x = torch.randn(batch, in_channels, side, side, side, device=device)
    y = torch.zeros(batch, 1, side, side, side, dtype=torch.long, device=device)
    dtype = autocast_dtype(device)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
        out = model(x)
    DiceCELoss()(out, y).backward()
    model.zero_grad(set_to_none=True)
    return int(torch.cuda.max_memory_allocated(device))


def cuda_voxel_budget(preset: str, in_channels: int, n_classes: int, batch: int, device: torch.device,
                      checkpointing: bool = False) -> int:
    model = MedNeXt(MedNeXtConfig.preset(preset, in_channels=in_channels, n_classes=n_classes)).to(device)
    if checkpointing:
        model.set_checkpointing(True)
    small, large = (_peak_bytes(model, s, in_channels, batch, device) for s in PROBE_SIZES)
    per_voxel = max(1.0, (large - small) / (PROBE_SIZES[1] ** 3 - PROBE_SIZES[0] ** 3))
    fixed = small - per_voxel * PROBE_SIZES[0] ** 3
    # AdamW keeps two more copies of every weight, not allocated during the probe.
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    budget = int((USABLE_FRACTION * free - fixed - 2 * params) / per_voxel)
    log.info("GPU memory: %.2f MiB per 1000 patch voxels (batch %d), %.1f GiB free: up to %d voxels (%.0f^3)",
             per_voxel * 1000 / 2**20, batch, free / 2**30, budget, max(budget, 1) ** (1 / 3))
    return max(budget, 16 ** 3)
