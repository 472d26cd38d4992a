"""Import of nnU-Net v1 MedNeXt trainings, on the folder made with the official code
in Testing/fixtures/nnunet-v1 (see its README), and refusal of hostile pickles."""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.numpy import load_file

from mednextv2.bundle import load_bundle
from mednextv2.cli import main
from mednextv2.errors import InputError
from mednextv2.inference import preprocessing
from mednextv2.inference.pipeline import segment
from mednextv2.inference.sliding_window import SlidingWindowPredictor
from mednextv2.store.importer import ImportOptions, import_model
from mednextv2.store.safe_pickle import numpy_safe_globals

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "nnunet-v1"
RESULTS = FIXTURE / "nnUNet" / "3d_fullres" / "Task501_LungTiny"
TRAINER = RESULTS / "nnUNetTrainerV2_MedNeXt_S_kernel3__nnUNetPlansv2.1"


pytestmark = pytest.mark.usefixtures("home")


def _nothing_installed(home: Path) -> bool:
    return not (home / "models").exists() or list((home / "models").iterdir()) == []


def test_v1_folder_segments_like_the_official_network(tmp_path, home, capsys):
    raw = tmp_path / "dataset.json"  # the raw task's dataset.json, v1 form
    raw.write_text(json.dumps({"name": "LungTiny", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "tumour"}}))
    # a parent of the trainer folder is enough, as for v2
    assert main(["models", "--progress", "none", "import", str(FIXTURE / "nnUNet"), "--dataset-json", str(raw)]) == 0
    capsys.readouterr()
    bundle = load_bundle(home / "models" / "lungtiny")
    spec = bundle.spec
    assert [(lab.value, lab.name) for lab in spec.labels] == [(1, "tumour")]
    assert spec.network.n_channels == 4 and spec.network.grn is False and spec.network.grn_norm == "mean"
    assert spec.preprocessing.target_spacing == pytest.approx((5.0, 1.197265625, 1.197265625))
    assert spec.preprocessing.normalization[0].scheme == "ct"
    resampling = spec.preprocessing.resampling
    assert (resampling.data.order, resampling.data.order_z, resampling.probabilities.order) == (3, 0, 1)
    assert resampling.normalize_first is False and resampling.softmax_first is True
    assert spec.inference.importance_map == "nnunet"
    assert spec.provenance.imported_from["trainer"] == "nnUNetTrainerV2_MedNeXt_S_kernel3"
    assert "/" not in json.dumps(spec.provenance.to_json())  # names, never paths

    scan = sitk.ReadImage(str(FIXTURE / "lung1_crop.nrrd"))
    official = load_file(str(FIXTURE / "v1_network_grid.safetensors"))
    # 1. v1's preprocessing (cubic spline in-plane, nearest across the 5 mm slices, then CT normalisation)
    pre = preprocessing.preprocess([scan], bundle.preprocessing)
    np.testing.assert_allclose(pre.data[0], official["data"].astype(np.float32), atol=2e-2, rtol=1e-3)  # float16 storage
    # 2. the imported network on it gives the official network's labels
    model = bundle.build_models("cpu")[0]
    padded = torch.nn.functional.pad(torch.from_numpy(pre.data)[None], (10, 10, 10, 10, 4, 4))  # one 32x96x96 window
    with torch.no_grad():
        logits = model(padded)[0, :, 4:-4, 10:-10, 10:-10]
    expected = official["logits"].astype(np.float32).argmax(0)
    assert (logits.argmax(0).numpy() == expected).mean() >= 0.999
    # 3. end to end, on the scan's own grid: the labels v1's predictor and export wrote
    labels = segment(scan, "lungtiny", device="cpu", tta=False)
    v1 = sitk.ReadImage(str(FIXTURE / "v1_labels.nii.gz"))
    got, want = sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(v1)
    assert labels.GetSize() == scan.GetSize() and labels.GetOrigin() == scan.GetOrigin()
    assert labels.GetSpacing() == scan.GetSpacing() and labels.GetDirection() == scan.GetDirection()
    assert (got == want).mean() >= 0.999
    assert 0.2 < want.mean() < 0.8  # both labels present: the comparison can fail


def test_v1_without_dataset_json_names_labels_and_says_how_to_rename(tmp_path, home, caplog):
    path = import_model(TRAINER, model_id="v1-plain")
    assert [lab.name for lab in load_bundle(path).spec.labels] == ["label_1"]
    assert "--dataset-json" in caplog.text
    # a dataset.json beside the trainer folder is used
    copy = tmp_path / "Task501_LungTiny"
    shutil.copytree(RESULTS, copy)
    (copy / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "nodule": 1}}))
    path = import_model(copy / TRAINER.name, model_id="v1-named")
    assert [lab.name for lab in load_bundle(path).spec.labels] == ["nodule"]
    with pytest.raises(InputError, match="missing.json is missing"):
        import_model(TRAINER, model_id="v1-x", options=ImportOptions(dataset_json=tmp_path / "missing.json"))


class _RunsCommand:
    """A pickle that runs a shell command while being loaded: what a hostile plans.pkl would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("victim", ["plans.pkl", "fold_0/model_final_checkpoint.model.pkl",
                                    "fold_0/model_final_checkpoint.model"])
def test_hostile_pickles_are_refused_before_any_code_runs(tmp_path, home, victim):
    folder = tmp_path / TRAINER.name
    shutil.copytree(TRAINER, folder)
    marker = tmp_path / "pwned"
    if victim.endswith(".model"):
        with torch.serialization.safe_globals(numpy_safe_globals()):
            ckpt = torch.load(folder / victim, weights_only=True)
        torch.save({**ckpt, "plot_stuff": _RunsCommand(marker)}, folder / victim)
        expected = r"weights_only=True.*Refusing to unpickle"
    else:
        with open(folder / victim, "wb") as f:
            pickle.dump({"plans_per_stage": {0: {}}, "hook": _RunsCommand(marker)}, f)
        expected = r"asks to load (posix|os)\.system while unpickling.*Refusing it"
    with pytest.raises(InputError, match=expected):
        import_model(folder)
    assert not marker.exists()
    assert _nothing_installed(home)
    # the same file really runs its command when unpickled without the restriction
    if not victim.endswith(".model"):
        with open(folder / victim, "rb") as f:
            pickle.load(f)
        assert marker.exists()


def test_v1_single_tile_segment_gives_the_official_networks_labels(tmp_path, home, data_dir, capsys):
    """A real CT already at the plan's spacing and patch size is one tile: its labels are
    argmax(the network in float64), tile borders included."""
    from plain_mednext import PlainMedNeXt

    raw = tmp_path / "dataset.json"
    raw.write_text(json.dumps({"name": "LungTiny", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "tumour"}}))
    assert main(["models", "--progress", "none", "import", str(FIXTURE / "nnUNet"), "--dataset-json", str(raw)]) == 0
    capsys.readouterr()
    bundle = load_bundle(home / "models" / "lungtiny")
    assert bundle.spec.inference.patch_size == (32, 96, 96)
    spacing = tuple(reversed(bundle.preprocessing.target_spacing))  # x, y, z
    # 96 x 96 x 32 voxels of lung1 at the plan's spacing, around the tumour of the fixture's crop
    lung = sitk.ReadImage(str(data_dir / "ct-lung" / "lung1_image.nrrd"))
    size = (96, 96, 32)
    origin = tuple(c - n * s / 2 for c, n, s in zip((-20.5, -119.7, -617.5), size, spacing))
    scan = sitk.Resample(lung, size, sitk.Transform(), sitk.sitkLinear, origin, spacing, lung.GetDirection(), -1024.0)

    labels = sitk.GetArrayFromImage(segment(scan, "lungtiny", device="cpu", tta=False))

    pre = preprocessing.preprocess([scan], bundle.preprocessing)
    assert pre.data.shape == (1, 32, 96, 96)  # the plan's grid is the scan's own: one tile
    network = PlainMedNeXt(bundle.spec.network.config(deep_supervision=False)).double().eval()
    network.load_state_dict(bundle.load_state_dicts()[0])
    with torch.no_grad():
        exact = network(torch.from_numpy(pre.data).double()[None])[0]
    expected = exact.argmax(0).numpy()
    agreement = (labels == expected).mean()
    assert agreement >= 0.999, f"{agreement:.4%} of the voxels have the network's label"
    assert 0.05 < expected.mean() < 0.95  # both labels present: the comparison can fail
    # the stitched logits are the network's as float16 holds them, up to the tile's corners
    inference = bundle.inference
    stitched = SlidingWindowPredictor(bundle.build_models("cpu"), bundle.n_classes, inference.patch_size,
                                      inference.step, (), "cpu", importance_map=inference.importance_map).predict(pre.data)
    torch.testing.assert_close(stitched.float(), exact.float(), atol=2.0 ** -10, rtol=2.0 ** -10)
