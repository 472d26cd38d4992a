"""What a MedNeXt block's reference forward (layers.py) and its CPU fast path (cpu_fast_path.py) share."""
from __future__ import annotations

import torch

GRN_EPS = 1e-6  # official: gx / (gx.mean(dim=1) + 1e-6)


def pad_start(x: torch.Tensor) -> torch.Tensor:
    """One zero voxel before every spatial axis, keeping the memory layout.

    The up block's transposed conv (padding k//2) gives 2n-1 voxels; the official code pads at
    the start to 2n. F.pad would return the default layout and slow every later layer down.
    """
    n, c, d, h, w = x.shape
    layout = torch.channels_last_3d if x.is_contiguous(memory_format=torch.channels_last_3d) else torch.contiguous_format
    out = torch.empty((n, c, d + 1, h + 1, w + 1), dtype=x.dtype, device=x.device, memory_format=layout)
    out[:, :, 0].zero_()
    out[:, :, :, 0].zero_()
    out[:, :, :, :, 0].zero_()
    out[:, :, 1:, 1:, 1:] = x
    return out


def grn_scale(g: torch.Tensor, gamma: torch.Tensor, norm: str) -> torch.Tensor:
    """1 + gamma * N(g), with g the per-channel L2 norms on the last axis.

    N(g) = g / (mean_j g_j + eps) in the official code ("mean"), g / (sum_j g_j + eps) in the
    seed paper ("sum"); gamma * (h * N) + h = h * (1 + gamma * N), which the callers fold into
    the compression."""
    denominator = g.sum(dim=-1, keepdim=True) if norm == "sum" else g.mean(dim=-1, keepdim=True)
    return 1.0 + gamma * (g / (denominator + GRN_EPS))
