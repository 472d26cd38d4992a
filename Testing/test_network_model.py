"""MedNeXt beyond the fixtures: other configurations, checkpoint forms, switches and bad input."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mednextv2.network import (PRESETS, MedNeXt, MedNeXtConfig, config_from_state_dict, from_official_state_dict,
                               official_state_dict)
from plain_mednext import PlainMedNeXt  # the spec written literally, an independent reference

SMALL = MedNeXtConfig(in_channels=3, n_channels=6, n_classes=5, exp_r=2, kernel_size=5,
                      block_counts=[1, 2, 1, 1, 1, 1, 1, 2, 1], grn=True, deep_supervision=True)


def randomise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def outputs_close(a, b, tol=1e-4):
    a = a if isinstance(a, list) else [a]
    b = b if isinstance(b, list) else [b]
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        # float32 sums in another order: 1e-4 of the output's scale (random weights give outputs >> 1)
        assert (x - y).abs().max().item() <= tol * max(1.0, y.abs().max().item())


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("cfg", [
    SMALL,
    SMALL.replace(grn=False, kernel_size=3, exp_r=[2, 3, 4, 4, 4, 4, 4, 3, 2]),
    MedNeXtConfig.preset("v2-tiny", in_channels=2, n_classes=4),
], ids=["k5-grn-in3", "k3-nogrn", "v2-tiny"])
def test_matches_literal_spec_on_other_configurations(cfg, grad):
    ours = randomise(MedNeXt(cfg)).eval()
    plain = PlainMedNeXt(cfg).eval()
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(2, cfg.in_channels, 32, 16, 48, generator=torch.Generator().manual_seed(3))
    with torch.set_grad_enabled(grad):
        outputs_close(ours(x), plain(x))


def test_batch_items_are_independent():
    """GRN statistics are per sample: a batch must equal its items run alone."""
    model = randomise(MedNeXt(SMALL)).eval()
    x = torch.randn(3, 3, 32, 16, 32)
    with torch.no_grad():
        batched = model(x)[0]
        for i in range(3):
            outputs_close(batched[i:i + 1], model(x[i:i + 1])[0])


def test_gradients_match_literal_spec_and_checkpointing():
    cfg = SMALL.replace(deep_supervision=False)
    ours = randomise(MedNeXt(cfg)).train()
    plain = PlainMedNeXt(cfg).train()
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 16, 16, 32)
    ours(x).square().mean().backward()
    plain(x).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in ours.named_parameters()}
    for n, p in plain.named_parameters():
        assert torch.allclose(grads[n], p.grad, atol=1e-5, rtol=1e-4), n
    ours.zero_grad()
    ours.set_checkpointing(True)
    ours(x).square().mean().backward()
    for n, p in ours.named_parameters():
        assert torch.allclose(grads[n], p.grad, atol=1e-6, rtol=1e-5), n
    with pytest.raises(ValueError, match="unknown stage"):
        ours.set_checkpointing(["encoder"])


def test_state_dict_round_trip_through_safetensors(tmp_path):
    model = randomise(MedNeXt(SMALL)).eval()
    save_file(official_state_dict(model), tmp_path / "w.safetensors")
    loaded = from_official_state_dict(load_file(tmp_path / "w.safetensors")).eval()
    assert loaded.config == SMALL
    x = torch.randn(1, 3, 16, 32, 16)
    with torch.no_grad():
        outputs_close(model(x), loaded(x), tol=0)


def test_config_round_trip_through_json():
    for name in PRESETS:
        cfg = MedNeXtConfig.preset(name, in_channels=2, n_classes=7, kernel_size=5)
        assert MedNeXtConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert MedNeXtConfig.preset("v2-tiny").grn and MedNeXtConfig.preset("v2-base").n_channels == 32


@pytest.mark.parametrize("wrap", ["plain", "nnunet_v1", "nnunet_v2", "ddp", "compiled", "ddp_compiled"])
def test_loads_checkpoint_containers_and_prefixes(wrap):
    model = randomise(MedNeXt(SMALL))
    sd = official_state_dict(model)
    prefix = {"ddp": "module.", "compiled": "_orig_mod.", "ddp_compiled": "module._orig_mod."}.get(wrap, "")
    sd = {prefix + k: v for k, v in sd.items()}
    obj = {"state_dict": sd, "epoch": 3} if wrap == "nnunet_v1" else {"network_weights": sd, "trainer_name": "x"} \
        if wrap == "nnunet_v2" else sd
    loaded = from_official_state_dict(obj)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_checkpoint_without_deep_supervision_heads():
    model = randomise(MedNeXt(SMALL)).eval()
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith(("out_1", "out_2", "out_3", "out_4"))}
    loaded = from_official_state_dict(sd).eval()
    assert not loaded.config.deep_supervision
    x = torch.randn(1, 3, 32, 32, 32)
    with torch.no_grad():
        full = loaded(x)
        assert torch.is_tensor(full)
        outputs_close(full, model(x)[0], tol=0)
        loaded.set_deep_supervision(True)  # fine-tuning with deep supervision: heads are created
        outs = loaded(x)
    assert [o.shape[-1] for o in outs] == [32, 16, 8, 4, 2]
    outputs_close(outs[0], full, tol=0)
    again = from_official_state_dict(sd, deep_supervision=True)
    assert again.config.deep_supervision and hasattr(again, "out_4")


def test_deep_supervision_can_be_switched_off():
    model = randomise(MedNeXt(SMALL)).eval()
    x = torch.randn(1, 3, 32, 16, 32)
    with torch.no_grad():
        ds = model(x)
        model.set_deep_supervision(False)
        outputs_close(model(x), ds[0], tol=0)


def test_bad_inputs_raise_clear_value_errors():
    model = MedNeXt(SMALL).eval()
    with pytest.raises(ValueError, match="5-D input"):
        model(torch.zeros(3, 16, 16, 16))
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.zeros(1, 3, 16, 20, 16))
    with pytest.raises(ValueError, match="3 input channel"):
        model(torch.zeros(1, 1, 16, 16, 16))


def test_bad_checkpoints_raise_clear_value_errors():
    sd = MedNeXt(SMALL).state_dict()
    with pytest.raises(ValueError, match="unexpected entry 'encoder.weight'"):  # names no MedNeXt has: refused first
        from_official_state_dict({"encoder.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match="stem.weight"):
        from_official_state_dict({"out_0.conv_out.weight": torch.zeros(4, 2, 1, 1, 1)})
    with pytest.raises(ValueError, match="state dict"):
        from_official_state_dict([1, 2, 3])
    broken = dict(sd)
    broken["enc_block_1.0.conv3.weight"] = torch.zeros(12, 7, 1, 1, 1)
    with pytest.raises(ValueError, match="wrong shapes.*enc_block_1.0.conv3.weight"):
        from_official_state_dict(broken)
    with pytest.raises(ValueError, match="unexpected entry 'decoder.extra.weight'"):
        from_official_state_dict(dict(sd, **{"decoder.extra.weight": torch.zeros(2)}))
    extra = dict(sd, **{"stem.grn_gamma": torch.zeros(2)})  # a MedNeXt-like name this network lacks
    with pytest.raises(ValueError, match="unexpected keys"):
        from_official_state_dict(extra)
    partial = {k: v for k, v in sd.items() if not k.startswith("out_3")}
    with pytest.raises(ValueError, match="partly present"):
        config_from_state_dict(partial)
    with pytest.raises(ValueError, match="preset"):
        MedNeXtConfig.preset("v3-huge")
    with pytest.raises(ValueError, match="exp_r"):
        MedNeXtConfig(exp_r=[2, 2])


@pytest.mark.parametrize("grad", [False, True])
def test_norm_is_exact_on_activations_far_from_zero(grad):
    """Channels-last GroupNorm in torch loses ~0.1 on mean-20/std-0.5 data; ours must not."""
    from mednextv2.network.layers import MedNeXtBlock
    from plain_mednext import PlainBlock

    ours = randomise(MedNeXtBlock(16, 16, 2, 3, grn=True)).eval()
    plain = PlainBlock(16, 16, 2, 3, True).eval()
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(1, 16, 32, 32, 32, generator=torch.Generator().manual_seed(5)) * 0.5 + 20
    with torch.set_grad_enabled(grad):
        got = ours(x.contiguous(memory_format=torch.channels_last_3d)).detach().double()
    with torch.no_grad():
        exact = plain.double()(x.double())
    assert (got - exact).abs().max().item() < 1e-4 * max(1.0, exact.abs().max().item())


@pytest.mark.parametrize("shape", [(2, 8, 4, 5, 6), (1, 3, 1, 2, 1)])
def test_polyphase_transposed_depthwise_equals_conv_transpose(shape):
    from mednextv2.network.cpu_fast_path import transposed_depthwise_k3s2

    g = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last_3d)
    w, b = torch.randn(shape[1], 1, 3, 3, 3, generator=g), torch.randn(shape[1], generator=g)
    expected = torch.nn.functional.conv_transpose3d(x, w, b, stride=2, padding=1, groups=shape[1])
    got = transposed_depthwise_k3s2(x, w, b)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("fused", [True, False], ids=["onednn-fused", "addmm"])
@pytest.mark.parametrize("keep_bytes", [0, 1 << 30], ids=["recompute", "keep"])
def test_cpu_inference_paths_match_literal_spec(monkeypatch, fused, keep_bytes):
    """Every CPU inference route (fused or not, expansion kept or recomputed, several chunks)."""
    from mednextv2.network import cpu_fast_path
    from mednextv2.network.cpu_kernels import fused_available

    if fused and not fused_available():
        pytest.fail("oneDNN's fused linear ops are missing from this torch build; the fast path is untested")
    monkeypatch.setattr(cpu_fast_path, "fused_available", lambda: fused)
    monkeypatch.setattr(cpu_fast_path, "KEEP_EXPANSION_BYTES", keep_bytes)
    monkeypatch.setattr(cpu_fast_path, "CHUNK_VOXELS", 1000)  # not a divisor of the voxel counts: a ragged last chunk
    cfg = SMALL.replace(kernel_size=3)
    ours = randomise(MedNeXt(cfg)).eval()
    plain = PlainMedNeXt(cfg).eval()
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 32, 16, 48, generator=torch.Generator().manual_seed(11))
    with torch.inference_mode():
        outputs_close(ours(x), plain(x))


def test_blocks_leave_their_input_alone_unless_told():
    """Blocks accumulate into their input only when the caller passes inplace=True (as MedNeXt does)."""
    from mednextv2.network.layers import MedNeXtBlock

    block = randomise(MedNeXtBlock(8, 8, 2, 3, grn=True)).eval()
    x = torch.randn(1, 8, 16, 16, 16).contiguous(memory_format=torch.channels_last_3d)
    before = x.clone()
    with torch.inference_mode():
        out = block(x)
        assert torch.equal(x, before)
        again = block(x.clone(memory_format=torch.channels_last_3d), inplace=True)
    outputs_close(again, out)
    model = randomise(MedNeXt(SMALL)).eval()
    image = torch.randn(1, 3, 32, 16, 32)
    kept = image.clone()
    with torch.inference_mode():
        model(image)
    assert torch.equal(image, kept)


def test_up_block_adds_its_output_into_the_skip_only_when_told():
    """up(x, skip=s) is up(x) + s on every path; only with inplace=True may the sum land in s itself."""
    from mednextv2.network.layers import MedNeXtBlock

    block = randomise(MedNeXtBlock(16, 8, 2, 3, grn=True, resample="up")).eval()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 8, 8, 8, generator=g).contiguous(memory_format=torch.channels_last_3d)
    skip = torch.randn(2, 8, 16, 16, 16, generator=g).contiguous(memory_format=torch.channels_last_3d)
    before = skip.clone()
    with torch.inference_mode():
        expected = block(x) + skip
        assert torch.equal(block(x, skip=skip), expected)
        assert torch.equal(skip, before)
        summed = block(x, inplace=True, skip=skip)
    assert summed.data_ptr() == skip.data_ptr()
    assert torch.equal(summed, expected)
    kept = before.clone()
    with torch.enable_grad():  # the autograd path never writes into the skip
        outputs_close(block(x, inplace=True, skip=before).detach(), expected)
    assert torch.equal(before, kept)


def test_fused_kernels_fall_back_when_onednn_refuses(monkeypatch):
    """A torch build whose oneDNN lacks the fused ops (or has no CPU kernel for them) uses addmm."""
    from mednextv2.network import cpu_kernels

    class Refusing:
        def __getattr__(self, name):
            raise NotImplementedError(f"Could not run 'mkldnn::{name}' with arguments from the 'CPU' backend")

    monkeypatch.setattr(cpu_kernels.torch.ops, "mkldnn", Refusing())
    cpu_kernels.fused_available.cache_clear()
    try:
        assert cpu_kernels.fused_available() is False
    finally:
        monkeypatch.undo()
        cpu_kernels.fused_available.cache_clear()
    assert cpu_kernels.fused_available() is True


def test_inference_on_one_voxel_levels_leaves_the_weights_alone():
    """A 16^3 input reaches the bottleneck as one voxel; the up block's residual must be a fresh
    tensor there too, not the bias parameter itself (writing into it changed the model)."""
    model = randomise(MedNeXt(SMALL)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        first = model(x)
        second = model(x)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert not changed, f"inference changed {changed}"
    outputs_close(first, second)
