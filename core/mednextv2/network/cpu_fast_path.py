"""A MedNeXt block's forward on the CPU without autograd, computed in the cheapest exact way we measured.

The block (layers.py) keeps the reference forward and hands inference here. Exact rewrites
(see Testing/benchmarks/bench_network.py):
- Activations are kept in `channels_last_3d` memory, where the depthwise and 1x1x1 convolutions
  run 3-7x faster than in the default layout.
- The GroupNorm folds into the expansion, and GRN into the compression (as in the reference
  path's `_compress`): both become per-channel scales of a conv's weights and a shifted bias.
- The 1x1x1 expand -> GELU -> compress runs over chunks of voxels that stay in cache, as oneDNN
  matmuls with the bias, GELU and residual add fused in (cpu_kernels.py). The output is
  accumulated into the residual's buffer. GRN needs the whole expansion's statistics first:
  small expansions are kept, large ones recomputed (large fresh buffers cost page faults and
  DRAM traffic, and memory).
- The per-channel sums of squares (the norm's variance, GRN's L2 norms) are GEMVs over squares
  in one chunk-sized scratch (ColumnSquares), not reductions over the wide tensor.
- A batch of small samples (the sliding window's 32^3 tiles and their mirrored copies) runs each
  step of the norm/MLP/GRN part once per group of samples whose expansion fits a few MiB
  (per-sample statistics as one op, one expansion GEMM, one batched compression); large samples
  run one by one in chunks.
- An up block adds its output into the decoder's skip in place (the zero padding needs no copy),
  and its transposed convs are rewritten without the inserted zeros (polyphase depthwise convs,
  and a 1x1x1 conv plus a strided copy for the residual).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F

from .cpu_kernels import compress_add_, expand_gelu, fused_available
from .functional import grn_scale, pad_start

if TYPE_CHECKING:
    from .layers import MedNeXtBlock

# Voxels per MLP chunk: 8k-16k beat 4k by 3-11% at 64^3 on a host with a busy shared L3 and tied at
# 128^3 (bench_network.py --chunks); fewer, larger ops also wait less on a busy CPU.
CHUNK_VOXELS = 16384
SQUARES_PARTIAL_FLOATS = 16384  # ColumnSquares' partial sums: 64 KiB, within L2
# Samples smaller than this (voxels) share each op of a block's MLP (mlp_into_batch); larger ones
# run one by one in cache-sized chunks, which measured faster for them.
BATCH_MLP_VOXELS = CHUNK_VOXELS
# ...in groups whose expansion stays within this: fresh buffers of tens of MiB cost page faults and
# DRAM traffic. At 16 x 32^3 tiles, groups of ~2-3 MiB ran v2-tiny's 1/2-resolution up block 2x
# faster than the whole batch (20 MiB) and v2-base's 1/2-1/4 levels 1.3-2x faster per sample
# than batched (their samples are over this alone).
BATCH_MLP_BYTES = 3 << 20
KEEP_EXPANSION_BYTES = 256 << 20  # keeping the expansion beat recomputing it by 3-25% at 64^3 (bench_network); above this, memory wins


class ColumnSquares:
    """Per-column sums of squares of a (voxels, channels) float32 matrix fed in row chunks.

    Squares into one chunk-sized scratch, then column sums as a GEMV: as fast as `sum(0)` or
    faster, and 30-60% faster than a Gram matrix's diagonal or `vector_norm(dim=0)`. A GEMV adds
    its rows one after another: over a 16k-row chunk its float32 sums are off by ~1e-5
    (relative), which GRN magnifies to tens of times the literal float32 network's output error.
    So the GEMV sums every `block`-th row (the chunk viewed as (rows / block, block * channels)),
    its `block` partial sums are added in float64, and so are the chunks' totals: no float32 sum
    runs over more than a few hundred terms (bench_network.py, "GRN's sums of squares" row).
    """

    def __init__(self, voxels: int, channels: int) -> None:
        rows = min(CHUNK_VOXELS, voxels)
        self.channels = channels
        # block * channels floats of partial sums stay in cache while the rows stream past.
        self.block = max(8, min(256, SQUARES_PARTIAL_FLOATS // channels))
        self._total = torch.zeros(channels, dtype=torch.float64)
        self._squares = torch.empty(rows, channels, dtype=torch.float32)
        self._ones = torch.ones(max(1, rows // self.block), dtype=torch.float32)

    def add(self, part: torch.Tensor) -> None:
        n, c, b = part.shape[0], self.channels, self.block
        squares = torch.mul(part, part, out=self._squares[:n])
        whole = n - n % b
        if whole:
            strided = squares[:whole].view(whole // b, b * c)
            partial = torch.mv(strided.t(), self._ones[:whole // b])
            self._total += partial.view(b, c).sum(0, dtype=torch.float64)
        if whole < n:
            self._total += squares[whole:].sum(0, dtype=torch.float64)

    @property
    def total(self) -> torch.Tensor:
        return self._total.float()


def batch_column_squares(rows: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-column sums of squares of a (samples, voxels, channels) float32 tensor, (samples, channels).

    ColumnSquares' precision for a batch of small samples in a few ops: each float32 sum runs over
    every `block`-th row only (at most voxels / block terms), the `block` partial sums are added in
    float64.
    """
    n, v, c = rows.shape
    block = max(8, min(256, SQUARES_PARTIAL_FLOATS // c))
    squares = rows * rows
    whole = v - v % block
    total = torch.zeros(n, c, dtype=torch.float64)
    if whole:
        partial = squares[:, :whole].reshape(n, whole // block, block * c).sum(1)
        total += partial.view(n, block, c).sum(1, dtype=torch.float64)
    if whole < v:
        total += squares[:, whole:].sum(1, dtype=torch.float64)
    return total.float()


# Per output parity along an axis, the taps of a stride-2, padding-1, kernel-3 transposed conv:
# even outputs 2j take w[1]*x[j]; odd outputs 2j+1 take w[2]*x[j] + w[0]*x[j+1].
_PHASE_TAPS = ([1], [2, 0])


def transposed_depthwise_k3s2(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """conv_transpose3d(x, weight, bias, stride=2, padding=1, groups=C) as 8 small convs on x.

    Each output parity class is a plain depthwise conv of x with a 1- or 2-tap kernel per axis,
    so no work is spent on the inserted zeros; 2.5-3x faster on the CPU than ConvTranspose3d.
    """
    n, c, d, h, w = x.shape
    out = torch.empty((n, c, 2 * d - 1, 2 * h - 1, 2 * w - 1), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last_3d)
    for pz, tz in enumerate(_PHASE_TAPS):
        for py, ty in enumerate(_PHASE_TAPS):
            for px, tx in enumerate(_PHASE_TAPS):
                if (pz and d == 1) or (py and h == 1) or (px and w == 1):
                    continue  # an axis of one voxel has no odd outputs
                kernel = weight[:, :, tz][:, :, :, ty][:, :, :, :, tx].contiguous()
                out[:, :, pz::2, py::2, px::2] = F.conv3d(x, kernel, bias, groups=c)
    return out


def applies(x: torch.Tensor) -> bool:
    """Whether `forward` serves this input: float32 on the CPU, without autograd (its in-place
    writes and folded weights have no backward)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()


def forward(block: MedNeXtBlock, x: torch.Tensor, inplace: bool, skip: Optional[torch.Tensor]) -> torch.Tensor:
    """`block(x, inplace, skip)`, the same function as its reference forward, computed the fast way."""
    h = depthwise(block, x).contiguous(memory_format=torch.channels_last_3d)
    if not block.residual:  # the MLP's output is accumulated into `out`: start from zero
        out = torch.empty((x.shape[0], block.conv3.out_channels) + tuple(h.shape[2:]), dtype=h.dtype,
                          device=h.device, memory_format=torch.channels_last_3d).zero_()
    elif block.resample is None:
        out = x if inplace else x.clone(memory_format=torch.channels_last_3d)
    elif block.resample == "down":
        out = block.res_conv(x)
    else:
        out = upsample_residual(block, x)
    out = out.contiguous(memory_format=torch.channels_last_3d)
    n = x.shape[0]
    sample_bytes = 4 * h[0, 0].numel() * block.conv2.out_channels  # one sample's expansion
    group = min(n, BATCH_MLP_BYTES // sample_bytes)
    if group > 1 and h[0, 0].numel() < BATCH_MLP_VOXELS:
        count = -(-n // group)  # groups of near-equal size
        bounds = [round(i * n / count) for i in range(count + 1)]
        for start, stop in zip(bounds, bounds[1:]):
            mlp_into_batch(block, h[start:stop], out[start:stop])
    else:
        for i in range(x.shape[0]):
            mlp_into(block, h[i:i + 1], out[i:i + 1])
    if skip is not None and inplace and skip.shape == (out.shape[0], out.shape[1]) + tuple(s + 1 for s in out.shape[2:]):
        # The padded voxels are zero: the sum is the skip plus `out` on its interior, added where
        # the skip lies, so no padded copy and no fresh sum are written (each a page-faulting buffer).
        skip[:, :, 1:, 1:, 1:] += out
        return skip
    if block.resample == "up":
        out = pad_start(out)
    return out if skip is None else out + skip


def mlp_into(block: MedNeXtBlock, h: torch.Tensor, out: torch.Tensor, fused: Optional[bool] = None) -> None:
    """out += conv3(GRN(GELU(conv2(norm(h))))) for one sample, in cache-sized voxel chunks.

    `h` is the depthwise conv's output (it is centred in place); `out` holds the residual and
    receives the sum, so no fresh block-sized buffer is touched (fresh ones cost page faults).
    The norm is per channel, so it folds into the expansion: conv2(h*a + b) is a conv with
    weight W*a and bias W@b + bias. `fused` None: oneDNN's fused kernels where available.
    """
    c_in, c_out = h.shape[1], out.shape[1]
    # Centre h in place (the norm ignores the mean); the variance of centred data is then a
    # mean of squares, taken over the contiguous (voxels, channels) view, not channels-last.
    h.sub_(h.mean(dim=(2, 3, 4), keepdim=True))
    x2d = h.permute(0, 2, 3, 4, 1).reshape(-1, c_in)  # a view: h is channels-last
    voxels = x2d.shape[0]
    chunks = [(s, min(s + CHUNK_VOXELS, voxels)) for s in range(0, voxels, CHUNK_VOXELS)]
    squares = ColumnSquares(voxels, c_in)
    for s, e in chunks:
        squares.add(x2d[s:e])
    var = squares.total / voxels
    w2 = block.conv2.weight.view(-1, c_in)
    b2 = block.conv2.bias + w2 @ block.norm.bias
    w2 = (w2 * (block.norm.weight * torch.rsqrt(var + block.norm.eps))).contiguous()
    w3 = block.conv3.weight.view(c_out, -1)
    b3 = block.conv3.bias
    hidden = w2.shape[0]
    fused = fused_available() if fused is None else fused
    # GRN needs statistics of the whole expansion before the compression can start: keep the
    # expansion where it is small, recompute it chunk by chunk where keeping it would cost memory.
    kept = [] if block.grn and voxels * hidden * 4 <= KEEP_EXPANSION_BYTES else None
    if block.grn:
        squares = ColumnSquares(voxels, hidden)  # GRN's L2 norms
        for s, e in chunks:
            part = expand_gelu(x2d[s:e], w2, b2, fused)
            if kept is not None:
                kept.append(part)
            squares.add(part)
        g = squares.total.sqrt()
        scale = grn_scale(g, block.grn_gamma.view(-1), block.grn_norm)
        b3 = b3 + w3 @ block.grn_beta.view(-1)
        w3 = w3 * scale
    w3 = w3.contiguous()
    out2d = out.permute(0, 2, 3, 4, 1).view(-1, c_out)  # view() so the writes land in `out`
    for i, (s, e) in enumerate(chunks):
        part = kept[i] if kept is not None else expand_gelu(x2d[s:e], w2, b2, fused)
        compress_add_(part, out2d[s:e], w3, b3, fused)

def mlp_into_batch(block: MedNeXtBlock, h: torch.Tensor, out: torch.Tensor, fused: Optional[bool] = None) -> None:
    """`mlp_into` for a whole batch of small samples at once: each op serves every sample.

    The per-sample norm scales h in place (h is the depthwise conv's output, narrow), so one
    expansion GEMM serves all samples; GRN's per-sample scale goes into the compression's
    weights, one batched GEMM. The caller sends only small samples whose expansions fit
    BATCH_MLP_BYTES together: it is kept whole.
    """
    n, c_in = h.shape[:2]
    c_out = out.shape[1]
    h.sub_(h.mean(dim=(2, 3, 4), keepdim=True))
    rows = h.permute(0, 2, 3, 4, 1).reshape(n, -1, c_in)  # a view: h is channels-last
    voxels = rows.shape[1]
    var = batch_column_squares(rows) / voxels
    rows.mul_((block.norm.weight * torch.rsqrt(var + block.norm.eps)).unsqueeze(1))
    w2 = block.conv2.weight.view(-1, c_in)
    b2 = block.conv2.bias + w2 @ block.norm.bias
    fused = fused_available() if fused is None else fused
    y = expand_gelu(rows.view(-1, c_in), w2.contiguous(), b2, fused)
    w3 = block.conv3.weight.view(c_out, -1)
    out_rows = out.permute(0, 2, 3, 4, 1).view(n, voxels, c_out)  # view() so the writes land in `out`
    if not block.grn:
        compress_add_(y, out_rows.view(-1, c_out), w3.contiguous(), block.conv3.bias, fused)
        return
    y = y.view(n, voxels, -1)
    scale = grn_scale(batch_column_squares(y).sqrt(), block.grn_gamma.view(1, -1), block.grn_norm)
    b3 = block.conv3.bias + w3 @ block.grn_beta.view(-1)
    out_rows.baddbmm_(y, (w3.unsqueeze(0) * scale.unsqueeze(1)).transpose(1, 2)).add_(b3)


def upsample_residual(block: MedNeXtBlock, x: torch.Tensor) -> torch.Tensor:
    """The up block's stride-2 1x1x1 transposed conv: W^T x + b on even voxels, b on odd ones.

    Written as a 1x1x1 conv and a strided copy, 20x faster on the CPU than ConvTranspose3d.
    Like the main branch it is (2n-1)^3 before the official pad.
    """
    n, _, d, h, w = x.shape
    weight, bias = block.res_conv.weight, block.res_conv.bias
    # A fresh tensor, filled: `.contiguous()` of the expanded bias is the bias parameter itself
    # when the output is one sample of one voxel, and the writes below would change the model.
    out = torch.empty((n, bias.numel(), 2 * d - 1, 2 * h - 1, 2 * w - 1), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last_3d)
    out.copy_(bias.view(1, -1, 1, 1, 1))
    out[:, :, ::2, ::2, ::2] = F.conv3d(x, weight.transpose(0, 1), bias)
    return out


def depthwise(block: MedNeXtBlock, x: torch.Tensor) -> torch.Tensor:
    conv = block.conv1
    if block.resample == "up" and conv.kernel_size == (3, 3, 3):
        return transposed_depthwise_k3s2(x, conv.weight, conv.bias)
    return conv(x)
