"""Our MedNeXt against outputs of the official MedNeXt code (Testing/fixtures/official-mednext)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mednextv2.network import MedNeXt, MedNeXtConfig, config_from_state_dict, from_official_state_dict, upkern

TOL = 1e-4


def manifest(fixtures_dir):
    return json.loads((fixtures_dir / "manifest.json").read_text(encoding="utf-8"))


def cases(fixtures_dir):
    return {c["name"]: c for c in manifest(fixtures_dir)["cases"]}


@pytest.mark.parametrize("name", ["v2pattern_C4_k3_in1_cls3_ds", "v1B_C4_k5_in2_cls4_ds_nogrn"])
@pytest.mark.parametrize("grad", [False, True], ids=["inference-path", "autograd-path"])
def test_all_deep_supervision_outputs_match_official(fixtures_dir, name, grad):
    case = cases(fixtures_dir)[name]
    weights = load_file(fixtures_dir / f"{name}.weights.safetensors")
    io = load_file(fixtures_dir / f"{name}.io.safetensors")
    model = from_official_state_dict(weights).eval()
    assert model.config == MedNeXtConfig.from_dict(case["config"])
    with torch.set_grad_enabled(grad):
        outputs = model(io["input"])
    assert len(outputs) == 5
    for i, out in enumerate(outputs):
        expected = io[f"output_{i}"]
        assert out.shape == expected.shape
        assert (out - expected).abs().max().item() < TOL, f"output_{i}"


def test_parameter_count_of_fixture_cases(fixtures_dir):
    for name, case in cases(fixtures_dir).items():
        model = MedNeXt(MedNeXtConfig.from_dict(case["config"]))
        # the official count includes its 1-element dummy_tensor, which we do not have
        assert sum(p.numel() for p in model.parameters()) == case["n_parameters"] - 1
        weights = load_file(fixtures_dir / f"{name}.weights.safetensors")
        assert set(model.state_dict()) == set(weights) - {"dummy_tensor"}
        assert len(weights) == case["n_state_dict_keys"]


PRESET_OF = {"v2_base": "v2-base", "v2_width2": "v2-width2", "v1_S": "v1-S", "v1_L": "v1-L"}


def test_full_size_presets_have_official_parameter_counts(fixtures_dir):
    counts = manifest(fixtures_dir)["parameter_counts_full_size"]
    assert len(counts) >= 5
    for key, official in counts.items():
        parts = key.split("_")  # e.g. v2_base_C32_k3_in1_cls3_ds
        cfg = MedNeXtConfig.preset(PRESET_OF["_".join(parts[:2])], in_channels=int(parts[4][2:]),
                                   n_classes=int(parts[5][3:]), kernel_size=int(parts[3][1:]),
                                   deep_supervision=parts[6] == "ds")
        with torch.device("meta"):
            model = MedNeXt(cfg)
        assert sum(p.numel() for p in model.parameters()) == official - 1, key


def test_upkern_matches_official_rule(fixtures_dir):
    up = manifest(fixtures_dir)["upkern"]
    source = load_file(fixtures_dir / f"{up['name']}.k3.weights.safetensors")
    expected = load_file(fixtures_dir / f"{up['name']}.k5-upkern.weights.safetensors")
    target = MedNeXt(MedNeXtConfig.from_dict(up["target_config"]))
    assert config_from_state_dict(source).kernel_size == 3
    upkern(source, target)
    got = target.state_dict()
    assert set(got) == set(expected) - {"dummy_tensor"}
    resized = [k for k in got if got[k].shape != source[k].shape]
    assert resized, "some conv weights must have been resized"
    for key, value in got.items():
        assert value.shape == expected[key].shape, key
        assert (value - expected[key]).abs().max().item() < 1e-6, key


def test_upkern_refuses_a_different_architecture(fixtures_dir):
    source = load_file(fixtures_dir / "v1B_C4_k5_in2_cls4_ds_nogrn.weights.safetensors")
    target = MedNeXt(MedNeXtConfig.preset("v2-tiny", kernel_size=5))
    with pytest.raises(ValueError, match="UpKern"):
        upkern(source, target)
