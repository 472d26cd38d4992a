"""Import of nnU-Net v2 results folders/zips whose network is a MedNeXt, built from the official
MedNeXt reference weights in Testing/fixtures/official-mednext, plus zip safety."""
from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file

from mednextv2.bundle import load_bundle
from mednextv2.cli import main
from mednextv2.errors import InputError
from mednextv2.inference import finishing, preprocessing
from mednextv2.inference.pipeline import segment
from mednextv2.inference.sliding_window import SlidingWindowPredictor
from mednextv2.network import from_official_state_dict
from mednextv2.store.cache import ModelCache
from mednextv2.store.catalog import resolve_model
from mednextv2.store.importer import ImportOptions, import_model, safe_extract_zip

CASE = "v2pattern_C4_k3_in1_cls3_ds"  # 1 input channel, 3 classes, deep supervision heads
TRAINER = "nnUNetTrainer_MedNeXtV2_L_k3_GRN"
STATS = {"max": 3071.0, "mean": 84.5, "median": 90.0, "min": -1024.0, "percentile_00_5": -958.0,
         "percentile_99_5": 1187.0, "std": 211.3}


pytestmark = pytest.mark.usefixtures("home")


@pytest.fixture(scope="module")
def official(fixtures_dir):
    weights = load_file(str(fixtures_dir / f"{CASE}.weights.safetensors"))
    io = load_file(str(fixtures_dir / f"{CASE}.io.safetensors"))
    perturbed = {k: v + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) if v.is_floating_point()
                 else v for k, v in weights.items()}
    return {"weights": weights, "perturbed": perturbed, "input": io["input"], "output_0": io["output_0"]}


def plans_json(*, configurations: Sequence[str] = ("3d_fullres",), reader="SimpleITKIO", transpose=(0, 1, 2),
               schemes=("CTNormalization",), spacing=(2.5, 0.8, 0.8), patch=(32, 32, 32)) -> dict:
    """plans.json laid out as nnU-Net v2 (>= 2.4) writes it."""
    backward = [int(i) for i in np.argsort(transpose)]
    conf = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": list(patch), "median_image_size_in_voxels": [120.0, 256.0, 256.0], "spacing": list(spacing),
        "normalization_schemes": list(schemes), "use_mask_for_norm": [False] * len(schemes),
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {"network_class_name": "nnunetv2.nets.MedNeXt.MedNeXt",
                         "arch_kwargs": {"n_channels": 4, "kernel_size": 3, "grn": True}, "_kw_requires_import": []},
        "batch_dice": False,
    }
    configs = {"2d": dict(conf, data_identifier="nnUNetPlans_2d", patch_size=[256, 256], spacing=list(spacing[1:]))}
    for name in configurations:
        configs[name] = dict(conf, data_identifier=f"nnUNetPlans_{name}")
    if "3d_lowres" in configurations:
        configs["3d_lowres"].update(spacing=[s * 2 for s in spacing], next_stage="3d_cascade_fullres")
    return {
        "dataset_name": "Dataset501_Liver", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing), "original_median_shape_after_transp": [120, 256, 256],
        "image_reader_writer": reader, "transpose_forward": list(transpose), "transpose_backward": backward,
        "configurations": configs, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {str(i): STATS for i in range(len(schemes))},
    }


def dataset_json(labels: Optional[dict] = None, channels: Optional[dict] = None) -> dict:
    return {"channel_names": channels or {"0": "CT"},
            "labels": labels or {"background": 0, "liver": 1, "tumor": 2},
            "numTraining": 131, "file_ending": ".nii.gz", "name": "Liver", "description": "Liver and tumour CT",
            "licence": "CC-BY-SA 4.0"}


def checkpoint(weights: Dict[str, torch.Tensor], fold) -> dict:
    """What nnUNetTrainer.save_checkpoint writes: weights plus optimizer, logging (numpy floats), init args."""
    return {
        "network_weights": {f"_orig_mod.{k}": v for k, v in weights.items()},  # saved from a compiled network
        "optimizer_state": {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float64(0.61), np.float64(0.72)], "ema_fg_dice": [0.6, 0.7],
                    "train_losses": [0.4, 0.3], "epoch_start_timestamps": [1.0, 2.0]},
        "_best_ema": np.float64(0.7), "current_epoch": 1000,
        "init_args": {"plans": {"dataset_name": "Dataset501_Liver"}, "configuration": "3d_fullres", "fold": fold,
                      "dataset_json": dataset_json(), "device": torch.device("cpu")},
        "trainer_name": TRAINER, "inference_allowed_mirroring_axes": (0, 1, 2),
    }


def write_results(root: Path, folds: Dict, *, plans: Optional[dict] = None, dataset: Optional[dict] = None,
                  configuration: str = "3d_fullres") -> Path:
    folder = root / "Dataset501_Liver" / f"{TRAINER}__nnUNetPlans__{configuration}"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans or plans_json(), indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset or dataset_json(), indent=1))
    (folder / "dataset_fingerprint.json").write_text(json.dumps({"spacings": [[2.5, 0.8, 0.8]]}))
    for fold, weights in folds.items():
        (folder / f"fold_{fold}").mkdir()
        torch.save(checkpoint(weights, fold), folder / f"fold_{fold}" / "checkpoint_final.pth")
        (folder / f"fold_{fold}" / "validation").mkdir()
        (folder / f"fold_{fold}" / "validation" / "summary.json").write_text("{}")
    return folder


def direct(weights) -> torch.nn.Module:
    return from_official_state_dict(weights, deep_supervision=False).eval()


def test_ensemble_import_gives_the_official_logits(tmp_path, official, home):
    folder = write_results(tmp_path, {0: official["weights"], 1: official["perturbed"]})
    path = import_model(folder)
    assert path == home / "models" / "dataset501-liver"
    bundle = load_bundle(path)
    spec = bundle.spec.to_json()
    assert spec["weights"] == ["fold_0.safetensors", "fold_1.safetensors"]
    assert [(lab["value"], lab["name"]) for lab in spec["labels"]] == [(1, "liver"), (2, "tumor")]
    assert spec["channels"] == [{"name": "CT", "modality": "CT"}]
    assert spec["preprocessing"]["target_spacing"] == [2.5, 0.8, 0.8]
    assert spec["preprocessing"]["orientation"] == "as-is"
    assert spec["preprocessing"]["normalization"] == [{"scheme": "ct", "clip": [-958.0, 1187.0], "mean": 84.5, "std": 211.3}]
    assert spec["inference"]["patch_size"] == [32, 32, 32] and spec["inference"]["mirror_axes"] == [0, 1, 2]
    assert "fold_mirror_axes" not in spec["inference"]  # the folds agree: every fold mirrors on mirror_axes
    assert spec["inference"]["importance_map"] == "nnunet"  # tiles stitched as nnU-Net's predictor does
    assert spec["network"]["n_classes"] == 3 and spec["network"]["deep_supervision"] is False
    assert spec["license"] == "CC-BY-SA 4.0"
    assert spec["provenance"]["imported_from"]["trainer"] == TRAINER
    models = bundle.build_models("cpu")
    with torch.no_grad():  # fold 0 computes what the official code computed
        torch.testing.assert_close(models[0](official["input"]), official["output_0"], atol=1e-4, rtol=0)
    # fold 1 holds exactly the weights of the directly loaded network (a forward pass would add nothing)
    expected = direct(official["perturbed"]).state_dict()
    got = models[1].state_dict()
    assert sorted(got) == sorted(k for k in expected if not k.startswith(("out_1.", "out_2.", "out_3.", "out_4.")))
    assert all(torch.equal(got[k], expected[k]) for k in got)
    info = json.loads((path / ".install.json").read_text(encoding="utf-8"))
    assert info["source"] == "import" and info["folds"] == ["fold_0", "fold_1"]


def test_imported_model_segments_like_the_directly_loaded_network(tmp_path, official, data_dir, capsys):
    # a 21 x 27 x 10 network grid: one 32^3 tile, so the test stays fast on 2 CPU cores
    plans = plans_json(schemes=("ZScoreNormalization",), spacing=(2.1, 3.0, 3.0))
    folder = write_results(tmp_path, {0: official["weights"], 1: official["perturbed"]}, plans=plans,
                           dataset=dataset_json(channels={"0": "T1"}, labels={"background": 0, "gland": 1, "lesion": 2}))
    assert main(["models", "--progress", "none", "import", str(folder), "--fold", "1", "--id", "breast-f1"]) == 0
    capsys.readouterr()
    bundle = load_bundle(resolve_model("breast-f1"))
    assert bundle.weights == ("fold_1.safetensors",) and bundle.channels == (("T1", "MR"),)
    image = sitk.ReadImage(str(data_dir / "mr-breast" / "breast1_image.nrrd"))

    labels = segment(image, "breast-f1", device="cpu", tta=False)  # `-m ID` goes through resolve_model

    pre = preprocessing.preprocess([image], bundle.preprocessing)
    predictor = SlidingWindowPredictor([direct(official["perturbed"])], 3, (32, 32, 32), 0.5, (), torch.device("cpu"),
                                       importance_map="nnunet")  # what the import recorded
    expected = finishing.to_input_grid(predictor.predict(pre.data), pre.record)
    got = sitk.GetArrayFromImage(labels)
    assert got.shape == expected.shape == sitk.GetArrayFromImage(image).shape
    assert np.array_equal(got, expected)
    assert len(np.unique(got)) > 1  # random weights still split the image into several labels


def test_axis_order_of_nnunet_is_baked_into_the_weights(tmp_path, official):
    # NibabelIO reverses the array axes and transpose_forward permutes them again: both compose.
    reader, transpose = "NibabelIO", (2, 0, 1)
    plans = plans_json(reader=reader, transpose=transpose, spacing=(0.8, 0.7, 3.0), patch=(48, 32, 16))
    folder = write_results(tmp_path, {0: official["weights"]}, plans=plans)
    bundle = load_bundle(import_model(folder, model_id="axes"))
    reader_axes = (0, 1, 2) if reader == "SimpleITKIO" else (2, 1, 0)
    to_network = [reader_axes[t] for t in transpose]   # network axis i = our axis to_network[i]
    ours = [0.0] * 3
    for i, a in enumerate(to_network):
        ours[a] = [0.8, 0.7, 3.0][i]
    assert bundle.preprocessing.target_spacing == tuple(ours)
    x = torch.randn(1, 1, 16, 32, 48, generator=torch.Generator().manual_seed(3))  # our (z, y, x) array
    perm = (0, 1) + tuple(2 + a for a in to_network)
    back = (0, 1) + tuple(2 + int(i) for i in np.argsort(to_network))
    with torch.no_grad():
        expected = direct(official["weights"])(x.permute(perm)).permute(back)   # what nnU-Net computes
        torch.testing.assert_close(bundle.build_models("cpu")[0](x), expected, atol=1e-4, rtol=0)


def test_export_zip_with_two_configurations(tmp_path, official, home):
    results = tmp_path / "nnUNet_results"
    write_results(results, {0: official["weights"]})
    write_results(results, {0: official["weights"]}, plans=plans_json(configurations=("3d_fullres", "3d_lowres")),
                  configuration="3d_lowres")
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:  # paths relative to nnUNet_results, as nnU-Net's exporter writes
        for path in sorted(results.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(results).as_posix())
    with pytest.raises(InputError, match="several models.*--configuration"):
        import_model(archive)
    path = import_model(archive, options=ImportOptions(configuration="3d_lowres"))
    assert path.name == "dataset501-liver-3d-lowres"
    assert load_bundle(path).preprocessing.target_spacing == (5.0, 1.6, 1.6)
    assert sorted(p.name for p in (home / "tmp").iterdir()) == []


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _assert_nothing_installed(home: Path) -> None:
    assert not (home / "models").exists() or list((home / "models").iterdir()) == []
    assert not (home / "tmp").exists() or list((home / "tmp").iterdir()) == []


def test_checkpoint_that_needs_unpickling_is_refused(tmp_path, official, home):
    folder = write_results(tmp_path, {0: official["weights"]})
    marker = tmp_path / "pwned"
    torch.save({"network_weights": official["weights"], "trojan": _Payload(marker)}, folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(InputError, match=r"weights_only=True.*Refusing to unpickle"):
        import_model(folder)
    assert not marker.exists()
    _assert_nothing_installed(home)


def test_corrupt_checkpoint_is_reported(tmp_path, official, home):
    folder = write_results(tmp_path, {0: official["weights"]})
    path = folder / "fold_0" / "checkpoint_final.pth"
    path.write_bytes(path.read_bytes()[:5000])  # an interrupted copy
    with pytest.raises(InputError, match=r"fold_0/checkpoint_final.pth is not a readable PyTorch checkpoint"):
        import_model(folder)
    _assert_nothing_installed(home)


def test_non_mednext_network_is_refused(tmp_path, home):
    unet = {"encoder.stages.0.0.convs.0.conv.weight": torch.randn(32, 1, 3, 3, 3),
            "decoder.seg_layers.0.weight": torch.randn(3, 32, 1, 1, 1)}
    folder = write_results(tmp_path, {0: unet})
    with pytest.raises(InputError, match="not a MedNeXt"):
        import_model(folder)
    _assert_nothing_installed(home)


@pytest.mark.parametrize("change,message", [
    (dict(dataset=dataset_json(labels={"background": 0, "whole": [1, 2], "core": 2})), "region-based"),
    (dict(dataset=dataset_json(labels={"background": 0, "liver": 1})), "3 outputs but dataset.json lists 1 label"),
    (dict(dataset=dataset_json(labels={"background": 0, "a": 1, "b": 3})), "without gaps"),
    (dict(plans=plans_json(reader="SimpleITKIOWithReorient")), "SimpleITKIOWithReorient.*not supported"),
    (dict(plans=plans_json(schemes=("RescaleTo01Normalization",))), "RescaleTo01Normalization.*not supported"),
    (dict(dataset=dataset_json(channels={"0": "CT", "1": "PET"}), plans=plans_json(schemes=("CTNormalization",) * 2)),
     "takes 1 channel"),
])
def test_inconsistent_nnunet_folders_are_refused(tmp_path, official, home, change, message):
    folder = write_results(tmp_path, {0: official["weights"]}, **change)
    with pytest.raises(InputError, match=message):
        import_model(folder)
    _assert_nothing_installed(home)


def test_missing_final_checkpoint_points_to_the_option(tmp_path, official):
    folder = write_results(tmp_path, {0: official["weights"]})
    os.replace(folder / "fold_0" / "checkpoint_final.pth", folder / "fold_0" / "checkpoint_best.pth")
    with pytest.raises(InputError, match=r"no fold_\*/checkpoint_final.pth.*checkpoint_best.pth.*--checkpoint"):
        import_model(folder)
    assert load_bundle(import_model(folder, options=ImportOptions(checkpoint="checkpoint_best.pth"))).weights == ("fold_0.safetensors",)
    with pytest.raises(InputError, match="no fold named .fold_3."):
        import_model(folder, options=ImportOptions(folds=[3], checkpoint="checkpoint_best.pth"))


def _zip_with(path: Path, name: str, data: bytes = b"x", symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, data)
    return path


@pytest.mark.parametrize("name,symlink,message", [
    ("../evil.txt", False, r"outside the folder \('\.\.'\)"),
    ("model/../../evil.txt", False, r"outside the folder"),
    ("/tmp/evil.txt", False, "absolute path"),
    ("C:\\evil.txt", False, "absolute path"),
    ("link", True, "symbolic link"),
])
def test_zip_entries_escaping_the_folder_are_refused(tmp_path, name, symlink, message, home):
    archive = _zip_with(tmp_path / "bad.zip", name, b"/etc/passwd" if symlink else b"x", symlink)
    dest = tmp_path / "out" / "inner"
    with pytest.raises(InputError, match=message):
        safe_extract_zip(archive, dest)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").rglob("*")) in ([], [dest])
    assert not (tmp_path / "evil.txt").exists()
    with pytest.raises(InputError, match=message):
        import_model(archive)
    _assert_nothing_installed(home)


def test_zip_size_limits(tmp_path):
    archive = _zip_with(tmp_path / "big.zip", "weights.bin", b"\0" * 200_000)
    with pytest.raises(InputError, match="more than the"):
        safe_extract_zip(archive, tmp_path / "out", max_bytes=100_000)
    with zipfile.ZipFile(tmp_path / "many.zip", "w") as zf:
        for i in range(20):
            zf.writestr(f"f{i}", b"")
    with pytest.raises(InputError, match="holds 20 entries"):
        safe_extract_zip(tmp_path / "many.zip", tmp_path / "out2", max_files=10)
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros", b"\0" * (8 << 20))
    with pytest.raises(InputError, match="zip bomb"):
        safe_extract_zip(tmp_path / "bomb.zip", tmp_path / "out3")
    with pytest.raises(InputError, match="not a valid zip"):
        safe_extract_zip(_bytes_file(tmp_path / "fake.zip", b"not a zip"), tmp_path / "out4")


def _bytes_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_unknown_inputs_to_import(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        import_model(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither a model bundle.*nor an nnU-Net results folder"):
        import_model(tmp_path / "empty")
    with pytest.raises(InputError, match="neither a folder nor a zip"):
        import_model(_bytes_file(tmp_path / "model.pth", b"junk"))
    with pytest.raises(InputError, match="invalid model id"):
        import_model(tmp_path / "empty", model_id="../x")


def test_catalog_entry_with_an_nnunet_archive_is_converted_on_download(tmp_path, official, home):
    from mednextv2.store.catalog import download_model, load_catalog
    from mednextv2.store.download import DownloadSettings
    from http_test_server import FileServer, catalog_entry, catalog_json

    results = tmp_path / "nnUNet_results"
    write_results(results, {0: official["weights"], 1: official["perturbed"]})
    archive = tmp_path / "official.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(results.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(results).as_posix())
    data = archive.read_bytes()
    with FileServer() as server:
        server.add("/official.zip", data)
        entry = catalog_entry("mednextv2-liver", data, [server.url("/official.zip")], archive="nnunet",
                              nnunet={"folds": [1]})
        (tmp_path / "catalog.json").write_text(catalog_json([entry]))
        catalog = load_catalog(ModelCache.open(), [str(tmp_path / "catalog.json")])
        path = download_model(catalog.get("mednextv2-liver"), progress=None,
                              settings=DownloadSettings(retries=0, connect_timeout=2, read_timeout=5))
    bundle = load_bundle(path)
    assert path == home / "models" / "mednextv2-liver" and bundle.id == "mednextv2-liver"
    assert bundle.weights == ("fold_1.safetensors",)
    info = json.loads((path / ".install.json").read_text(encoding="utf-8"))
    assert info["sha256"] == entry["sha256"] and info["format"] == "nnunet" and info["folds"] == ["fold_1"]
    assert list((home / "downloads").iterdir()) == []


def test_single_tile_segment_gives_the_official_networks_labels(tmp_path, official):
    """An image already at the plan's spacing and patch size is one tile: its labels are
    argmax(official network) up to float rounding, tile borders included."""
    folder = write_results(tmp_path, {0: official["weights"]})
    assert import_model(folder, model_id="liver") is not None
    network_input = official["input"][0, 0].numpy().astype(np.float64)
    assert network_input.min() > (-958.0 - 84.5) / 211.3 and network_input.max() < (1187.0 - 84.5) / 211.3  # unclipped
    image = sitk.GetImageFromArray((network_input * 211.3 + 84.5).astype(np.float32))  # CT units that normalise to it
    image.SetSpacing((0.8, 0.8, 2.5))  # x, y, z: plans_json's spacing (z, y, x)

    labels = sitk.GetArrayFromImage(segment(image, "liver", device="cpu", tta=False))

    expected = official["output_0"][0].argmax(0).numpy()
    assert labels.shape == expected.shape == (32, 32, 32)
    agreement = (labels == expected).mean()
    assert agreement >= 0.999, f"{agreement:.4%} of the voxels have the official network's label"
    assert min(np.bincount(expected.ravel(), minlength=3)) > 1000  # every label present: the comparison can fail
