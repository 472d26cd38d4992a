"""`models import --from monai`: MONAI's MedNeXt becomes a bundle that computes MONAI's function.

The fixtures (Testing/fixtures/monai-mednext, generate.py) were made with MONAI's own class at
trained-network weight scales (GRN gamma/beta ~ N(0, 0.3)); their outputs are MONAI's, in float64.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file, save_file

from mednextv2.bundle import load_bundle
from mednextv2.bundle_spec import Normalization
from mednextv2.cli import main
from mednextv2.errors import InputError
from mednextv2.inference import preprocessing
from mednextv2.store.importer import ImportOptions, import_model
from mednextv2.store.monai import MonaiImportConfig
from plain_mednext import PlainMedNeXt

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "monai-mednext"
ERROR_RATIO = 2.0  # ours / literal float32, both against MONAI in float64 (as test_network_float64.py)
CT_CONFIG = {"labels": ["organ"], "channels": ["CT"], "orientation": "LPS", "pixdim": [3.0, 3.0, 3.0],
             "normalization": [{"scale_intensity_range": {"a_min": -175, "a_max": 250, "b_min": 0.0, "b_max": 1.0,
                                                          "clip": True}}],
             "roi_size": [32, 32, 32]}
MR2_CONFIG = {"labels": ["lesion"], "channels": ["MR", "MR"], "orientation": "as-is", "pixdim": None,
              "normalization": [{"normalize_intensity": {"nonzero": True, "channel_wise": True}}] * 2,
              "roi_size": [16, 32, 16]}
CASES = {"grn_ds": ("grn_ds.pt", CT_CONFIG), "nores_in2_k5": ("nores_in2_k5.safetensors", MR2_CONFIG)}


pytestmark = pytest.mark.usefixtures("home")


def write_config(tmp_path: Path, doc: dict, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def monai_state(name: str) -> dict:
    path = FIXTURES / name
    return torch.load(path, weights_only=True) if path.suffix == ".pt" else load_file(str(path))


def import_case(tmp_path, case: str, axis_order: str = "xyz", **changes):
    weights, config = CASES[case]
    doc = dict(config, axis_order=axis_order, **changes)
    return load_bundle(import_model(FIXTURES / weights, model_id=f"{case.replace('_', '-')}-{axis_order}", options=ImportOptions(source_format="monai", config=write_config(tmp_path, doc))))


def to_ours(x: torch.Tensor, axis_order: str) -> torch.Tensor:
    """A MONAI array (N, C, a0, a1, a2) as our (z, y, x) array; MONAI's LoadImage gives (x, y, z)."""
    return x.permute(0, 1, 4, 3, 2) if axis_order == "xyz" else x


# ---------------------------------------------------------------- the same function as MONAI's
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("axis_order", ["xyz", "zyx"])
def test_imported_network_computes_monais_output(tmp_path, case, axis_order):
    bundle = import_case(tmp_path, case, axis_order)
    io = load_file(str(FIXTURES / f"{case}.io.safetensors"))
    x, exact = to_ours(io["input"], axis_order), to_ours(io["output"], axis_order)
    ours = bundle.build_models("cpu")[0]
    plain = PlainMedNeXt(ours.config).eval()
    plain.load_state_dict(ours.state_dict())
    with torch.inference_mode():
        got = ours(x)
        literal = plain(x)
        in_float64 = plain.double()(x.double())
    # The key map is exact: the literal network in float64 is MONAI's float64 function.
    assert (in_float64 - exact).abs().max().item() < 1e-10
    ours_error, literal_error = ((o.double() - exact).abs().max().item() for o in (got, literal))
    assert ours_error <= ERROR_RATIO * literal_error, f"{ours_error:.2e} vs literal float32 {literal_error:.2e}"
    assert exact.abs().max().item() > 1.0  # realistic weights: outputs far from zero


def test_grn_parameters_under_their_later_monai_names(tmp_path):
    # MONAI after 1.6 calls them grn_gamma/grn_beta (and the argument grn); both import alike.
    state = {k.replace("global_resp_", "grn_"): v for k, v in monai_state("grn_ds.pt").items()}
    assert any(".grn_gamma" in k for k in state)
    save_file(state, str(tmp_path / "later.safetensors"))
    config = write_config(tmp_path, dict(CT_CONFIG, network={"grn": True}))
    later = load_bundle(import_model(tmp_path / "later.safetensors", model_id="later", options=ImportOptions(source_format="monai", config=config)))
    earlier = import_case(tmp_path, "grn_ds")
    for a, b in zip(later.load_state_dicts()[0].items(), earlier.load_state_dicts()[0].items()):
        assert a[0] == b[0] and torch.equal(a[1], b[1])


def test_down_blocks_get_identity_grn_and_deep_supervision_heads_are_dropped(tmp_path):
    bundle = import_case(tmp_path, "grn_ds")
    state = bundle.load_state_dicts()[0]
    assert bundle.network.deep_supervision is False and not any(k.startswith("out_1.") for k in state)
    assert "down_0.grn_gamma" not in state  # the official down_0 has none
    for level in (1, 2, 3):
        assert not state[f"down_{level}.grn_gamma"].any() and not state[f"down_{level}.grn_beta"].any()
    assert bundle.spec.provenance.imported_from["monai_args"]["deep_supervision"] is True


def test_monais_down_block_ratios_are_recorded_where_they_differ_from_the_official_rule(tmp_path):
    # MONAI's down_blocks[i] expands by encoder ratio i; the official down_i by the next stage's.
    grn_ds, nores = import_case(tmp_path, "grn_ds"), import_case(tmp_path, "nores_in2_k5")
    assert grn_ds.network.exp_r[:5] == (2, 3, 4, 4, 4) and grn_ds.network.down_exp_r == (2, 3, 4, 4)
    assert grn_ds.load_state_dicts()[0]["down_1.conv2.weight"].shape[0] == 3 * 4  # 4 channels, ratio 3
    assert nores.network.down_exp_r is None  # equal ratios: MONAI's rule is the official one
    assert "down_exp_r" not in json.loads((nores.source / "model.json").read_text())["network"]


def test_monais_default_without_residual_connections_is_recorded(tmp_path):
    nores, with_res = import_case(tmp_path, "nores_in2_k5"), import_case(tmp_path, "grn_ds")
    assert json.loads((nores.source / "model.json").read_text())["network"]["residual"] is False
    assert not any("res_conv" in k for k in nores.load_state_dicts()[0])
    assert "residual" not in json.loads((with_res.source / "model.json").read_text())["network"]
    assert nores.network.config().residual is False and with_res.network.config().residual is True
    from mednextv2.network import from_official_state_dict

    assert from_official_state_dict(nores.load_state_dicts()[0]).config == nores.network.config()


def test_config_becomes_the_bundles_plan(tmp_path):
    doc = dict(CT_CONFIG, pixdim=[1.5, 1.0, 2.5], roi_size=[64, 48, 32], mirror_axes=[0], overlap=0.25)
    bundle = import_case(tmp_path, "grn_ds", **{k: v for k, v in doc.items() if k not in CT_CONFIG or doc[k] != CT_CONFIG[k]})
    plan, inference = bundle.preprocessing, bundle.spec.inference
    assert plan.target_spacing == (2.5, 1.0, 1.5) and inference.patch_size == (32, 48, 64)  # MONAI's (x, y, z)
    assert inference.mirror_axes == (2,) and inference.step == 0.75 and plan.orientation == "LPS"
    assert [lab.name for lab in bundle.spec.labels] == ["organ"]


def test_scale_intensity_range_is_reproduced_by_the_ct_scheme():
    config = MonaiImportConfig.from_json(dict(CT_CONFIG, normalization=[{"scale_intensity_range": {
        "a_min": -1000, "a_max": 400, "b_min": -1.0, "b_max": 1.0, "clip": True}}]), "test")
    values = np.linspace(-3000, 3000, 1001).astype(np.float32)
    ours = preprocessing.normalize_channel(values.copy(), config.normalization[0], None)
    monai = (np.clip(values, -1000, 400) + 1000) / 1400 * 2.0 - 1.0  # MONAI's ScaleIntensityRange(clip=True)
    np.testing.assert_allclose(ours, monai, atol=1e-5)
    assert config.normalization[0] == Normalization("ct", (-1000.0, 400.0), -300.0, 700.0)


# ---------------------------------------------------------------- MONAI bundles
def write_monai_bundle(root: Path, *, network_def: dict, metadata: bool = True) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def,
                                                                 "network": "$@network_def.to(@device)"}))
    if metadata:
        (root / "configs" / "metadata.json").write_text(json.dumps({
            "name": "Spleen MedNeXt", "version": "0.1.0", "monai_version": "1.6.1",
            "network_data_format": {"inputs": {"image": {"modality": "CT", "num_channels": 1}},
                                    "outputs": {"pred": {"channel_def": {"0": "background", "1": "spleen"}}}}}))
    (root / "models" / "model.pt").write_bytes((FIXTURES / "grn_ds.pt").read_bytes())
    return root


GRN_DS_DEF = {"_target_": "monai.networks.nets.MedNeXt", "spatial_dims": 3, "init_filters": 2, "in_channels": 1,
              "out_channels": 2, "encoder_expansion_ratio": [2, 3, 4, 4], "decoder_expansion_ratio": [3, 2, 2, 4],
              "bottleneck_expansion_ratio": 4, "kernel_size": 3, "deep_supervision": True,
              "use_residual_connection": True, "blocks_down": [1, 2, 1, 1], "blocks_bottleneck": 1,
              "blocks_up": [1, 1, 2, 1], "global_resp_norm": True}


@pytest.mark.parametrize("zipped", [False, True])
def test_monai_bundle_folder_or_zip(tmp_path, zipped):
    root = write_monai_bundle(tmp_path / "spleen_mednext", network_def=GRN_DS_DEF)
    source = root
    if zipped:
        source = tmp_path / "spleen_mednext.zip"
        with zipfile.ZipFile(source, "w") as zf:
            for f in root.rglob("*"):
                zf.write(f, f.relative_to(tmp_path).as_posix())
    preprocessing_only = {k: v for k, v in CT_CONFIG.items() if k not in ("labels", "channels")}
    bundle = load_bundle(import_model(source, options=ImportOptions(source_format="monai", config=write_config(tmp_path, preprocessing_only))))
    assert bundle.id == "monai-spleen-mednext" and [lab.name for lab in bundle.spec.labels] == ["spleen"]
    assert bundle.spec.provenance.imported_from["monai_version"] == "1.6.1"
    expected = import_case(tmp_path, "grn_ds").load_state_dicts()[0]
    assert all(torch.equal(v, expected[k]) for k, v in bundle.load_state_dicts()[0].items())


@pytest.mark.parametrize("change,message", [
    ({"_target_": "monai.networks.nets.SegResNet"}, r"only monai.networks.nets.MedNeXt"),
    ({"kernel_size": "@kernel"}, r"network_def.kernel_size is the expression"),
    ({"init_filters": 4}, r"init_filters is 4 in the config but 2 in the weights"),
])
def test_monai_bundle_refusals(tmp_path, change, message, home):
    root = write_monai_bundle(tmp_path / "b", network_def=dict(GRN_DS_DEF, **change))
    with pytest.raises(InputError, match=message):
        import_model(root, options=ImportOptions(source_format="monai", config=write_config(tmp_path, CT_CONFIG)))
    assert not (home / "models").exists() or not any((home / "models").iterdir())


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize("fixture,message", [
    ("refuse_layer_norm.safetensors", r"norm_type 'layer'"),
    ("refuse_2d.safetensors", r"spatial_dims 2: only 3D"),
    ("refuse_three_levels.safetensors", r"blocks_down \[1, 1, 1\].*4 levels"),
])
def test_networks_the_official_mednext_cannot_compute_are_refused(tmp_path, fixture, message, home):
    with pytest.raises(InputError, match=message):
        import_model(FIXTURES / fixture, options=ImportOptions(source_format="monai", config=write_config(tmp_path, CT_CONFIG)))
    assert not (home / "models").exists() or not any((home / "models").iterdir())


@pytest.mark.parametrize("change,message", [
    ({"spacing": [1, 1, 1]}, r"unknown key\(s\) \['spacing'\]"),
    ({"network": {"init_filter": 2}}, r"unknown MONAI MedNeXt argument\(s\) \['init_filter'\]"),
    ({"network": {"kernel_size": 5}}, r"kernel_size is 5 in the config but 3 in the weights"),
    ({"network": {"encoder_expansion_ratio": [2, 2, 2, 3]}}, r"encoder_expansion_ratio is \[2, 2, 2, 3\] in the config"),
    ({"network": {"use_residual_connection": False}}, r"use_residual_connection is False in the config but True"),
    ({"network": {"grn": True, "global_resp_norm": False}}, r"grn and network.global_resp_norm disagree"),
    ({"orientation": "RAS"}, r"orientation 'RAS' cannot be reproduced"),
    ({"axis_order": "yxz"}, r"axis_order must be"),
    ({"labels": ["a", "b"]}, r"2 label\(s\) for a network with 2 output channels"),
    ({"channels": ["CT", "CT"]}, r"1 normalization entr\(ies\) for 2 channel\(s\)"),
    ({"channels": ["CT", "CT"], "normalization": CT_CONFIG["normalization"] * 2}, r"network takes 1 input channel\(s\)"),
    ({"roi_size": [96, 96, 40]}, r"roi_size \[96, 96, 40\]: each size must be divisible by 16"),
    ({"normalization": [{"scale_intensity_range": {"a_min": 0, "a_max": 1, "b_min": 0, "b_max": 1}}]},
     r"only clip true can be reproduced"),
    ({"mirror_axes": [3]}, r"mirror_axes must be"),
    ({"channels": ["MR", "MR"], "normalization": [{"normalize_intensity": {"nonzero": True}}] * 2},
     r"normalization\[0\].normalize_intensity: with several channels only channel_wise true"),
])
def test_config_problems_are_refused_naming_the_key(tmp_path, change, message, home):
    doc = {k: v for k, v in dict(CT_CONFIG, **change).items()}
    with pytest.raises(InputError, match=message):
        import_model(FIXTURES / "grn_ds.pt", options=ImportOptions(source_format="monai", config=write_config(tmp_path, doc)))
    assert not (home / "models").exists() or not any((home / "models").iterdir())


@pytest.mark.parametrize("missing", ["orientation", "pixdim", "normalization"])
def test_config_must_say_how_images_were_prepared(tmp_path, missing):
    doc = {k: v for k, v in CT_CONFIG.items() if k != missing}
    with pytest.raises(InputError, match=rf"missing \['{missing}'\]"):
        import_model(FIXTURES / "grn_ds.pt", options=ImportOptions(source_format="monai", config=write_config(tmp_path, doc)))


def test_options_that_do_not_go_together(tmp_path):
    config = write_config(tmp_path, CT_CONFIG)
    with pytest.raises(InputError, match=r"--from monai needs --config"):
        import_model(FIXTURES / "grn_ds.pt", options=ImportOptions(source_format="monai"))
    with pytest.raises(InputError, match=r"give it with --from monai"):
        import_model(FIXTURES / "grn_ds.pt", options=ImportOptions(config=config))
    with pytest.raises(InputError, match=r"--fold: nnU-Net options; they do not apply to --from monai"):
        import_model(FIXTURES / "grn_ds.pt", options=ImportOptions(source_format="monai", config=config, folds=[0]))
    with pytest.raises(InputError, match=r"expected a MONAI MedNeXt state dict"):
        import_model(FIXTURES / "manifest.json", options=ImportOptions(source_format="monai", config=config))
    with pytest.raises(InputError, match=r"--config .*missing.json: cannot read it"):
        import_model(FIXTURES / "grn_ds.pt", options=ImportOptions(source_format="monai", config=tmp_path / "missing.json"))
    with pytest.raises(InputError, match=r"--config .*: expected a JSON object"):
        import_model(FIXTURES / "grn_ds.pt", options=ImportOptions(source_format="monai", config=write_config(tmp_path, ["labels"], "list.json")))


def test_official_layout_is_pointed_to_the_plain_import(tmp_path):
    official = {k.replace("enc_stages.0.", "enc_block_0."): v for k, v in monai_state("grn_ds.pt").items()}
    save_file(official, str(tmp_path / "official.safetensors"))
    with pytest.raises(InputError, match=r"unexpected entry 'enc_block_0.*import it without --from monai"):
        import_model(tmp_path / "official.safetensors", options=ImportOptions(source_format="monai", config=write_config(tmp_path, CT_CONFIG)))


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pt_that_needs_unpickling_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": monai_state("grn_ds.pt"), "trojan": _Payload(marker)}, tmp_path / "model.pt")
    with pytest.raises(InputError, match=r"weights_only=True.*Refusing to unpickle"):
        import_model(tmp_path / "model.pt", options=ImportOptions(source_format="monai", config=write_config(tmp_path, CT_CONFIG)))
    assert not marker.exists()


def test_wrong_shapes_are_named_with_monais_key(tmp_path):
    state = monai_state("grn_ds.pt")
    state["dec_stages.3.0.conv3.weight"] = torch.zeros(3, 4, 1, 1, 1)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(InputError, match=r"dec_stages\.3\.0\.conv3\.weight: \(3, 4, 1, 1, 1\) vs expected \(2, 8, 1, 1, 1\)"):
        import_model(tmp_path / "bad.safetensors", options=ImportOptions(source_format="monai", config=write_config(tmp_path, CT_CONFIG)))


# ---------------------------------------------------------------- live MONAI, where installed
@pytest.mark.parametrize("residual", [True, False])
def test_against_monais_class_directly(tmp_path, residual):
    monai_nets = pytest.importorskip("monai.networks.nets")
    args = dict(spatial_dims=3, init_filters=3, in_channels=1, out_channels=3, encoder_expansion_ratio=(2, 3, 4, 4),
                decoder_expansion_ratio=(4, 4, 3, 2), bottleneck_expansion_ratio=4, kernel_size=3,
                deep_supervision=True, use_residual_connection=residual, blocks_down=(2, 1, 1, 1), blocks_bottleneck=2,
                blocks_up=(1, 1, 1, 2), global_resp_norm=True)
    model = monai_nets.MedNeXt(**args)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if "resp" in name or "grn" in name else 0.2))
    torch.save(model.state_dict(), tmp_path / "model.pt")
    config = write_config(tmp_path, dict(CT_CONFIG, labels=["a", "b"], axis_order="zyx", network={
        k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}))
    ours = load_bundle(import_model(tmp_path / "model.pt", options=ImportOptions(source_format="monai", config=config))).build_models("cpu")[0]
    x = torch.randn(1, 1, 32, 16, 32, generator=g)
    with torch.inference_mode():
        exact = model.double().eval()(x.double())
        literal = model.float()(x)
        got = ours(x)
    assert (got.double() - exact).abs().max().item() <= ERROR_RATIO * (literal.double() - exact).abs().max().item()


# ---------------------------------------------------------------- the journey
def test_cli_import_then_segment_lands_on_the_input_grid(tmp_path, data_dir, capsys):
    config = write_config(tmp_path, CT_CONFIG)
    assert main(["models", "--progress", "none", "import", str(FIXTURES / "grn_ds.pt"), "--from", "monai",
                 "--config", str(config), "--id", "monai-ct"]) == 0
    assert capsys.readouterr().out.strip().endswith("monai-ct")
    scan = data_dir / "ct-lung" / "lung1_image.nrrd"
    out = tmp_path / "labels.nii.gz"
    assert main(["segment", str(scan), "-m", "monai-ct", "-o", str(out), "--device", "cpu", "--no-tta",
                 "--progress", "none"]) == 0
    image, labels = sitk.ReadImage(str(scan)), sitk.ReadImage(str(out))
    assert labels.GetSize() == image.GetSize()
    np.testing.assert_allclose(labels.GetSpacing(), image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(labels.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(labels.GetDirection(), image.GetDirection(), atol=1e-6)
    assert set(np.unique(sitk.GetArrayViewFromImage(labels))) <= {0, 1}


# ---------------------------------------------------------------- down_exp_r in our own config and bundles
def test_down_exp_r_is_checked_and_absent_when_it_is_the_official_rule():
    from mednextv2.network import MedNeXtConfig

    base = MedNeXtConfig.preset("v1-B")
    assert base.replace(down_exp_r=[3, 4, 4, 4]).down_exp_r is None  # exp_r[1..4]: the official rule
    assert "down_exp_r" not in base.to_dict()
    other = base.replace(down_exp_r=[2, 3, 4, 4])
    assert other.down_ratios == [2, 3, 4, 4] and MedNeXtConfig.from_dict(other.to_dict()) == other
    for bad in ([2, 3, 4], [2, 3, 4, 0], [2, 3, 4, True]):
        with pytest.raises(ValueError, match=r"down_exp_r must be None or 4 ints"):
            base.replace(down_exp_r=bad)


def test_official_layout_with_monais_down_ratios_is_read_off_the_shapes(tmp_path):
    from mednextv2.network import from_official_state_dict

    bundle = import_case(tmp_path, "grn_ds", axis_order="zyx")
    state = bundle.load_state_dicts()[0]
    model = from_official_state_dict(state).eval()
    assert model.config.down_exp_r == [2, 3, 4, 4] and model.config == bundle.network.config()
    io = load_file(str(FIXTURES / "grn_ds.io.safetensors"))
    with torch.inference_mode():
        assert (model(io["input"]).double() - io["output"]).abs().max().item() < 1e-4


def test_bundle_with_a_wrong_down_exp_r_is_refused(tmp_path):
    folder = import_model(FIXTURES / "grn_ds.pt", options=ImportOptions(source_format="monai", config=write_config(tmp_path, CT_CONFIG)))
    doc = json.loads((folder / "model.json").read_text())
    doc["network"]["down_exp_r"] = [2, 3, 4]
    (tmp_path / "b").mkdir()
    for f in folder.iterdir():
        (tmp_path / "b" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "b" / "model.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"network.down_exp_r"):
        load_bundle(tmp_path / "b")


def test_monai_producer_round_trips_and_both_schema_engines_agree(tmp_path):
    from mednextv2.schema import load_schema, schema_errors
    from mednextv2.store.monai import convert_monai

    config = write_config(tmp_path, dict(CT_CONFIG, description="trained at /home/jane/Smith_J/monai"))
    bundle = convert_monai(FIXTURES / "grn_ds.pt", config, "round-trip", tmp_path / "unpacked")
    assert "Smith_J" not in bundle.spec.description  # strip_absolute_paths, as every import
    bundle.save(tmp_path / "saved")
    loaded = load_bundle(tmp_path / "saved")
    assert loaded.spec == bundle.spec and loaded.network.down_exp_r == (2, 3, 4, 4)
    schema = load_schema("model.schema.json")
    doc = bundle.spec.to_json()
    for network in ({**doc["network"], "down_exp_r": [2, 3]}, {**doc["network"], "residual": "no"}):
        bad = dict(doc, network=network)
        theirs = schema_errors(bad, schema, engine="jsonschema")
        assert theirs and schema_errors(bad, schema, engine="fallback") == theirs


def test_monai_bundle_with_a_yaml_inference_config(tmp_path):
    import yaml  # the test extra installs PyYAML; the engine reads YAML configs when it is there
    root = write_monai_bundle(tmp_path / "yaml_bundle", network_def=GRN_DS_DEF)
    (root / "configs" / "inference.json").unlink()
    (root / "configs" / "inference.yaml").write_text(yaml.safe_dump({"network_def": GRN_DS_DEF}))
    bundle = load_bundle(import_model(root, options=ImportOptions(source_format="monai", config=write_config(tmp_path, CT_CONFIG))))
    assert bundle.spec.provenance.imported_from["monai_args"]["encoder_expansion_ratio"] == [2, 3, 4, 4]
