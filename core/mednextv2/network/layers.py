"""MedNeXt blocks with the official parameter names.

`MedNeXtBlock.forward` is the reference computation, with two exact rewrites: GRN is folded into
the compression conv (gamma*(h*n) + beta + h = h*(1 + gamma*n) + beta, so `conv3(GRN(h))` is
`conv3` with its input channels scaled per sample and a shifted bias, which saves two passes over
the block's widest tensor), and channels-last GroupNorm is centred first. On the CPU without
autograd the block hands its input to cpu_fast_path.py. The stem's 1x1x1 conv is one
addcmul/GEMM written channels-last (pointwise_conv_to_channels_last).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_fast_path
from .functional import grn_scale, pad_start


def spatial_l2(h: torch.Tensor) -> torch.Tensor:
    """L2 norm over (D, H, W) per sample and channel, shape (N, C), accumulated in float32.

    `torch.norm` over spatial axes is very slow on channels-last memory, so reduce over the
    contiguous (N, DHW, C) view instead.
    """
    n, c = h.shape[:2]
    if h.is_contiguous(memory_format=torch.channels_last_3d) and not h.is_contiguous():
        flat = h.permute(0, 2, 3, 4, 1).reshape(n, -1, c)
        return torch.linalg.vector_norm(flat, dim=1, dtype=torch.float32)
    return torch.linalg.vector_norm(h.reshape(n, c, -1), dim=2, dtype=torch.float32)


def group_norm(h: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm with one group per channel, exact in both memory layouts.

    PyTorch's channels-last GroupNorm kernel sums squares in one float32 pass and lost 0.1
    (absolute) on activations of mean 20 and std 0.5, so channels-last input is centred first.
    """
    if not h.is_contiguous(memory_format=torch.channels_last_3d) or h.is_contiguous():
        return norm(h)  # the default-layout kernel is accurate
    centred = h - h.mean(dim=(2, 3, 4), keepdim=True)
    var = centred.square().mean(dim=(2, 3, 4), keepdim=True)
    scale = norm.weight.view(1, -1, 1, 1, 1) * torch.rsqrt(var + norm.eps)
    return centred * scale + norm.bias.view(1, -1, 1, 1, 1)


class MedNeXtBlock(nn.Module):
    """Depthwise conv -> GroupNorm -> 1x1x1 expand -> GELU -> [GRN] -> 1x1x1 compress, plus a residual.

    `resample` None: same resolution, identity residual (official MedNeXtBlock, do_res=True).
    "down": stride-2 depthwise conv, residual through a stride-2 1x1x1 conv (MedNeXtDownBlock).
    "up": stride-2 transposed depthwise conv, residual through a stride-2 transposed 1x1x1 conv,
    both padded by one voxel at the start of each axis (MedNeXtUpBlock).
    `residual` False: no residual branch (and no res_conv), as MONAI's MedNeXt builds by default.
    """

    def __init__(self, in_channels: int, out_channels: int, exp_r: int, kernel_size: int,
                 grn: bool, resample: Optional[str] = None, grn_norm: str = "mean", residual: bool = True) -> None:
        super().__init__()
        if resample not in (None, "down", "up"):
            raise ValueError(f"resample must be None, 'down' or 'up', got {resample!r}")
        if grn_norm not in ("mean", "sum"):
            raise ValueError(f"grn_norm must be 'mean' or 'sum', got {grn_norm!r}")
        self.grn_norm = grn_norm
        self.resample = resample
        self.residual = residual
        hidden = exp_r * in_channels
        padding = kernel_size // 2
        if resample == "up":
            self.conv1 = nn.ConvTranspose3d(in_channels, in_channels, kernel_size, stride=2, padding=padding, groups=in_channels)
        else:
            stride = 2 if resample == "down" else 1
            self.conv1 = nn.Conv3d(in_channels, in_channels, kernel_size, stride=stride, padding=padding, groups=in_channels)
        self.norm = nn.GroupNorm(num_groups=in_channels, num_channels=in_channels)
        self.conv2 = nn.Conv3d(in_channels, hidden, kernel_size=1)
        self.act = nn.GELU()
        self.conv3 = nn.Conv3d(hidden, out_channels, kernel_size=1)
        self.grn = grn
        if grn:
            self.grn_gamma = nn.Parameter(torch.zeros(1, hidden, 1, 1, 1))
            self.grn_beta = nn.Parameter(torch.zeros(1, hidden, 1, 1, 1))
        if resample == "down" and residual:
            self.res_conv = nn.Conv3d(in_channels, out_channels, kernel_size=1, stride=2)
        elif resample == "up" and residual:
            self.res_conv = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=1, stride=2)

    def _compress(self, h: torch.Tensor) -> torch.Tensor:
        if not self.grn:
            return self.conv3(h)
        g = spatial_l2(h)
        scale = grn_scale(g, self.grn_gamma.view(1, -1), self.grn_norm)
        weight = self.conv3.weight
        bias = self.conv3.bias + weight.flatten(1) @ self.grn_beta.view(-1)
        scaled = weight.unsqueeze(0) * scale.to(weight.dtype)[:, None, :, None, None, None]
        # A per-sample weight: one conv per sample (batches are small; cheaper than scaling h).
        if h.shape[0] == 1:
            return F.conv3d(h, scaled[0], bias)
        return torch.cat([F.conv3d(h[i:i + 1], scaled[i], bias) for i in range(h.shape[0])])

    def forward(self, x: torch.Tensor, inplace: bool = False, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`inplace=True`: the caller gives `x` up, and a same-resolution block may write its output
        there (the CPU inference path does; MedNeXt passes it inside a stage). `skip`: a tensor of
        the output's shape added to the output; with `inplace=True` an up block on the CPU
        inference path may add its output into `skip` and return it (MedNeXt's decoder does)."""
        if cpu_fast_path.applies(x):
            return cpu_fast_path.forward(self, x, inplace, skip)
        h = self.act(self.conv2(group_norm(self.conv1(x), self.norm)))
        h = self._compress(h)
        if self.resample is None:
            out = x + h if self.residual else h
            return out if skip is None else out + skip
        out = h + self.res_conv(x) if self.residual else h
        if self.resample == "up":
            out = pad_start(out)
        return out if skip is None else out + skip


def pointwise_conv_to_channels_last(x: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """conv(x) for a 1x1x1 conv with few input channels (the stem), returned in channels-last memory.

    With one input channel oneDNN's conv is a slow path and its output needs a layout copy after it:
    together ~20x slower on the CPU than one addcmul (several input channels: one GEMM) written
    straight into the (voxels, channels) rows of a channels-last tensor.
    """
    n, c, d, h, w = x.shape
    rows = x.permute(0, 2, 3, 4, 1).reshape(-1, c)
    weight = conv.weight.view(conv.out_channels, c)
    if c == 1:
        out = torch.addcmul(conv.bias, rows, weight.view(1, -1))
    else:
        out = torch.addmm(conv.bias, rows, weight.t())
    return out.view(n, d, h, w, conv.out_channels).permute(0, 4, 1, 2, 3)


class OutBlock(nn.Module):
    """Segmentation head: a 1x1x1 *transposed* conv, as in the official code (weight is (C, classes, 1, 1, 1))."""

    def __init__(self, in_channels: int, n_classes: int) -> None:
        super().__init__()
        self.conv_out = nn.ConvTranspose3d(in_channels, n_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv_out.weight
        # Same function as the transposed conv, as a plain conv: it has a channels-last kernel.
        return F.conv3d(x, w.transpose(0, 1), self.conv_out.bias)
