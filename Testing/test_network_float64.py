"""The network's float32 error against the literal network in float64, at trained-network weight scales.

The yardstick is the error of a literal float32 implementation of the same network (the plain
code, or the official code's own outputs in the fixtures): ours may be at most twice as far
from float64. GRN gamma/beta are drawn from N(0, 0.3), the size trained networks have; GRN
turns a small error in its channel norms into a large one in the output, which small GRN
weights and a loose tolerance cannot see.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mednextv2.network import PRESETS, MedNeXt, MedNeXtConfig, from_official_state_dict
from plain_mednext import PlainMedNeXt

GRN_SCALE = 0.3
ERROR_RATIO = 2.0  # ours / literal float32, both against float64


def realistic(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights of a trained network's size: convs at 0.5/sqrt(fan-in), GRN gamma/beta ~ N(0, 0.3)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = GRN_SCALE if "grn_" in name else 0.5 / max(1, p[0].numel()) ** 0.5
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def max_error(outputs, exact) -> float:
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    exact = exact if isinstance(exact, (list, tuple)) else [exact]
    assert len(outputs) == len(exact)
    return max((o.double() - e).abs().max().item() for o, e in zip(outputs, exact))


@pytest.mark.parametrize("preset,size", [(name, 32) for name in PRESETS] + [("v2-base", 64)])
def test_presets_are_as_exact_as_the_literal_float32_network(preset, size):
    cfg = MedNeXtConfig.preset(preset, in_channels=1, n_classes=3, deep_supervision=False)
    ours = realistic(MedNeXt(cfg)).eval()
    plain = PlainMedNeXt(cfg).eval()
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(1, 1, size, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        got = ours(x)
        literal = plain(x)
        exact = plain.double()(x.double())
    ours_error, literal_error = max_error(got, exact), max_error(literal, exact)
    assert ours_error <= ERROR_RATIO * literal_error, (
        f"{preset} at {size}^3: max error vs float64 {ours_error:.2e}, literal float32 {literal_error:.2e}")


@pytest.mark.parametrize("name", ["v2pattern_C4_k3_in1_cls3_ds", "v1B_C4_k5_in2_cls4_ds_nogrn"])
def test_official_fixtures_are_as_exact_as_the_official_code(fixtures_dir, name):
    """The fixtures' outputs are the official code's float32 results: its error is the yardstick."""
    io = load_file(fixtures_dir / f"{name}.io.safetensors")
    ours = from_official_state_dict(load_file(fixtures_dir / f"{name}.weights.safetensors")).eval()
    plain = PlainMedNeXt(ours.config).eval()
    plain.load_state_dict(ours.state_dict())
    official = [io[f"output_{i}"] for i in range(5)]
    with torch.inference_mode():
        got = ours(io["input"])
        exact = plain.double()(io["input"].double())
    ours_error, official_error = max_error(got, exact), max_error(official, exact)
    assert ours_error <= ERROR_RATIO * official_error, (
        f"{name}: max error vs float64 {ours_error:.2e}, the official code's {official_error:.2e}")


@pytest.mark.parametrize("preset,batch,shape", [
    ("v2-tiny", 2, (32, 32, 32)), ("v2-tiny", 3, (32, 16, 48)), ("v2-tiny", 8, (32, 32, 32)),
    ("v2-tiny", 5, (16, 16, 16)), ("v2-base", 3, (32, 32, 32)), ("v1-S", 3, (16, 32, 16))])
def test_batches_of_small_tiles_are_as_exact_as_tiles_alone(preset, batch, shape):
    """Small samples share each op of a block (the batched fast path); every sample must stay as exact
    against float64 as the literal float32 network, and equal itself run alone within that error.
    Each sample gets its own offset and scale, so statistics mixed between samples would show."""
    cfg = MedNeXtConfig.preset(preset, in_channels=1, n_classes=3, deep_supervision=False)
    ours = realistic(MedNeXt(cfg)).eval()
    plain = PlainMedNeXt(cfg).eval()
    plain.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(batch)
    x = torch.randn((batch, 1) + shape, generator=g) * torch.linspace(0.5, 3.0, batch).view(-1, 1, 1, 1, 1)
    x += torch.linspace(-2.0, 4.0, batch).view(-1, 1, 1, 1, 1)
    with torch.inference_mode():
        got = ours(x)
        alone = torch.cat([ours(x[i:i + 1]) for i in range(batch)])
        literal = plain(x)
        exact = plain.double()(x.double())
    for i in range(batch):
        ours_error, literal_error = max_error(got[i], exact[i]), max_error(literal[i], exact[i])
        assert ours_error <= ERROR_RATIO * literal_error, (
            f"{preset}, sample {i} of {batch}: max error vs float64 {ours_error:.2e}, literal float32 {literal_error:.2e}")
        assert max_error(got[i], alone[i].double()) <= ERROR_RATIO * literal_error, f"sample {i} of {batch} differs alone"
