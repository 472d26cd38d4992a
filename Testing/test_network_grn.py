"""GRN's two normalisers: "mean" (official MedNeXt code) and "sum" (the seed paper).

Each variant is checked against its formula written out here, on the training path (autograd)
and on the CPU inference fast path (GRN folded into the compression, fused or addmm kernels),
and through the whole network and a bundle round trip.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mednextv2 import load_bundle
from mednextv2.bundle import Bundle
from mednextv2.network import MedNeXt, MedNeXtConfig
from mednextv2.network.layers import MedNeXtBlock
from segment_fixtures import bundle_spec


def literal_block(block: MedNeXtBlock, x: torch.Tensor, norm: str) -> torch.Tensor:
    """A same-resolution block as the MedNeXt-v2 paper writes it, with GRN per `norm`:

        g = ||h||_2 over (D, H, W), per sample and channel
        mean: N = g / (mean over channels of g + 1e-6)      (official MedNeXt code)
        sum:  N = g / (sum over channels of g + 1e-6)       (seed paper: ||X_i|| / sum_j ||X_j||)
        h = gamma * (h * N) + beta + h
    """
    h = F.conv3d(x, block.conv1.weight, block.conv1.bias, padding=block.conv1.padding, groups=x.shape[1])
    h = F.group_norm(h, x.shape[1], block.norm.weight, block.norm.bias, eps=1e-5)
    h = F.gelu(F.conv3d(h, block.conv2.weight, block.conv2.bias))
    g = torch.sqrt((h.double() ** 2).sum(dim=(2, 3, 4), keepdim=True))
    if norm == "mean":
        n = g / (g.mean(dim=1, keepdim=True) + 1e-6)
    else:
        n = g / (g.sum(dim=1, keepdim=True) + 1e-6)
    h = block.grn_gamma * (h * n.float()) + block.grn_beta + h
    return x + F.conv3d(h, block.conv3.weight, block.conv3.bias)


def random_block(norm: str, channels: int = 6, exp_r: int = 3) -> MedNeXtBlock:
    block = MedNeXtBlock(channels, channels, exp_r, 3, grn=True, grn_norm=norm).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        # a large gamma, so that the two normalisers (a factor 18 apart here) give different blocks
        block.grn_gamma.mul_(40.0)
    return block


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() <= 1e-4 * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("norm", ["mean", "sum"])
def test_block_equals_its_literal_formula_on_every_path(monkeypatch, norm):
    from mednextv2.network import cpu_fast_path
    from mednextv2.network.cpu_kernels import fused_available

    block = random_block(norm)
    other = random_block("sum" if norm == "mean" else "mean")
    x = torch.randn(2, 6, 12, 10, 14, generator=torch.Generator().manual_seed(1))
    expected = literal_block(block, x, norm)
    assert not close(literal_block(block, x, "sum" if norm == "mean" else "mean"), expected)  # the formulas differ here

    with torch.enable_grad():  # the training path: GRN folded into conv3 per sample
        assert close(block(x), expected)
        assert not close(other(x), expected)
    monkeypatch.setattr(cpu_fast_path, "CHUNK_VOXELS", 500)  # several chunks, a ragged last one
    for fused in ([True, False] if fused_available() else [False]):
        monkeypatch.setattr(cpu_fast_path, "fused_available", lambda f=fused: f)
        for keep in (0, 1 << 30):  # expansion recomputed, or kept
            monkeypatch.setattr(cpu_fast_path, "KEEP_EXPANSION_BYTES", keep)
            with torch.inference_mode():
                got = block(x.contiguous(memory_format=torch.channels_last_3d))
            assert close(got, expected), (fused, keep)


def test_network_passes_grn_norm_to_every_block():
    """A "sum" network whose gammas are C_hidden times the "mean" network's computes the same function."""
    mean_cfg = MedNeXtConfig(in_channels=1, n_channels=4, n_classes=3, exp_r=2, kernel_size=3, block_counts=1,
                             grn=True, deep_supervision=False)
    mean_net = MedNeXt(mean_cfg).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in mean_net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    sum_net = MedNeXt(mean_cfg.replace(grn_norm="sum")).eval()
    blocks = [m for m in sum_net.modules() if isinstance(m, MedNeXtBlock)]
    assert len(blocks) == 17 and all(m.grn_norm == "sum" for m in blocks)  # 9 stages of 1, 4 down, 4 up
    state = mean_net.state_dict()
    sum_net.load_state_dict({k: v * v.shape[1] if k.endswith("grn_gamma") else v for k, v in state.items()})
    x = torch.randn(1, 1, 32, 32, 32, generator=g)
    with torch.inference_mode():
        a, b, plain = mean_net(x), sum_net(x), MedNeXt(mean_cfg.replace(grn_norm="sum")).eval()
        plain.load_state_dict(state)
        c = plain(x)
    assert close(b, a)
    assert not close(c, a)  # same weights, other normaliser: another function


def test_config_and_bundle_store_and_restore_grn_norm(tmp_path):
    cfg = MedNeXtConfig(in_channels=1, n_channels=2, n_classes=2, exp_r=1, kernel_size=3, block_counts=1,
                        grn=True, grn_norm="sum", deep_supervision=False)
    assert MedNeXtConfig.from_dict(cfg.to_dict()).grn_norm == "sum"
    assert MedNeXtConfig().grn_norm == "mean"
    with pytest.raises(ValueError, match="grn_norm"):
        cfg.replace(grn_norm="max")
    path = Bundle.create(bundle_spec(cfg), [MedNeXt(cfg).state_dict()]).save(tmp_path / "b")
    assert json.loads((path / "model.json").read_text())["network"]["grn_norm"] == "sum"
    loaded = load_bundle(path)
    assert loaded.network.grn_norm == "sum"
    assert all(m.grn_norm == "sum" for m in loaded.build_models("cpu")[0].modules() if isinstance(m, MedNeXtBlock))
    # bundles written before the field existed are the official "mean"
    spec = json.loads((path / "model.json").read_text())
    del spec["network"]["grn_norm"]
    (path / "model.json").write_text(json.dumps(spec))
    model = load_bundle(path).build_models("cpu")[0]
    assert all(m.grn_norm == "mean" for m in model.modules() if isinstance(m, MedNeXtBlock))
