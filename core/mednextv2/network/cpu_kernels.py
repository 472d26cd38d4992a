"""The two matrix products of a MedNeXt block's MLP on the CPU, fused with their neighbours when oneDNN can.

oneDNN's matmul applies the bias, the exact (erf) GELU and the residual add in the same pass as
the product, so the r*C-wide result is written once instead of three times. On the 2-core CI
machine that made the v2-base forward at 64^3 1.47x faster than addmm plus separate passes
(Testing/benchmarks/bench_network.py, "op: chunk GEMMs" row). Builds without oneDNN, or whose
oneDNN refuses these ops, get the same function from addmm.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=None)
def fused_available() -> bool:
    """Whether torch's oneDNN linear-with-post-op kernels exist here and give the reference result."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        x, w, b = torch.randn(8, 4, generator=g), torch.randn(6, 4, generator=g), torch.randn(6, generator=g)
        res, w3, b3 = torch.randn(8, 3, generator=g), torch.randn(3, 6, generator=g), torch.randn(3, generator=g)
        y = torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none")
        z = torch.ops.mkldnn._linear_pointwise.binary(y, res, w3, b3, "add")
        y_ref = F.gelu(torch.addmm(b, x, w.t()))
        return bool(torch.allclose(y, y_ref, atol=1e-5) and torch.allclose(z, torch.addmm(b3, y_ref, w3.t()) + res, atol=1e-5))
    except (RuntimeError, AttributeError, NotImplementedError):  # op missing, no CPU kernel, or unsupported CPU
        return False


def expand_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, fused: bool) -> torch.Tensor:
    """GELU(x @ weight.T + bias) for x (voxels, C_in) and weight (hidden, C_in), as a new tensor."""
    if fused:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")
    return torch.ops.aten.gelu_(torch.addmm(bias, x, weight.t()))


def compress_add_(y: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, fused: bool) -> None:
    """residual += y @ weight.T + bias, in place; y (voxels, hidden), weight (C_out, hidden)."""
    if fused:
        residual.copy_(torch.ops.mkldnn._linear_pointwise.binary(y, residual, weight, bias, "add"))
    else:
        residual.addmm_(y, weight.t()).add_(bias)
