"""`mednextv2 train DS --base AMAES.pth`: a real fine-tuning run from an AMAES-format encoder on the
real breast MR (the real data's mr-breast), on the CPU in seconds. The encoder is the Yucca-built
fixture (Testing/fixtures/amaes-mednext); the run freezes it (--encoder-lr-scale 0) so the
bundle must carry exactly the file's encoder, the fresh decoder trained around it, and AMAES's
preprocessing as its plan."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from mednextv2.atomic import sha256_file
from mednextv2.bundle import load_bundle
from mednextv2.cli import main
from mednextv2.errors import InputError
from mednextv2.inference.pipeline import segment
from mednextv2.store.amaes import read_amaes
from mednextv2.train.fingerprint import ChannelStats, Fingerprint
from mednextv2.train.optim import is_encoder
from mednextv2.train.planning import plan_from_amaes, plan_from_dict

FIXTURE = Path(__file__).parent / "fixtures" / "amaes-mednext" / "amaes_small.pth"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("amaes")
    dataset = folder / "dataset"
    dataset.mkdir()
    for name in ("breast1_image.nrrd", "breast1_label.nrrd"):
        (dataset / name).write_bytes((data_dir / "mr-breast" / name).read_bytes())
    threads = torch.get_num_threads()
    try:
        code = main(["train", str(dataset), "-o", str(folder / "model"), "--base", str(FIXTURE), "--epochs", "1",
                     "--iterations", "3", "--patch", "32", "32", "32", "--device", "cpu", "--progress", "none",
                     "--threads", "1", "--encoder-lr-scale", "0"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return folder, dataset


def test_bundle_records_the_amaes_base_and_plan(trained):
    folder, _ = trained
    doc = json.loads((folder / "model" / "model.json").read_text(encoding="utf-8"))
    pre = doc["preprocessing"]
    assert pre["orientation"] == "RAS" and pre["axis_order"] == "xyz"
    assert pre["target_spacing"] == [1.0, 1.0, 1.0] and pre["crop_to_nonzero"] is True
    assert pre["normalization"] == [{"scheme": "volume_znorm", "upper_quantile": 0.99, "rescale": [0.0, 1.0]}]
    assert pre["resampling"]["data"] == {"order": 3, "order_z": 0, "force_separate_z": False}
    provenance = doc["provenance"]
    assert provenance["base_model"] == "amaes:amaes_small.pth"
    assert provenance["training"]["base"] == {"format": "amaes", "file": "amaes_small.pth", "encoder": "MedNeXt",
                                              "block_counts": [2, 1, 1, 1, 2], "exp_r": [2, 3, 4, 4, 4],
                                              "sha256": sha256_file(FIXTURE)}
    # The network: the file's encoder, the decoder mirroring it.
    assert doc["network"]["block_counts"] == [2, 1, 1, 1, 2, 1, 1, 1, 2]
    assert doc["network"]["exp_r"] == [2, 3, 4, 4, 4, 4, 4, 3, 2]
    assert doc["network"]["n_channels"] == 2 and doc["network"]["grn"] is False
    assert str(folder) not in json.dumps(doc) and str(FIXTURE.parent) not in json.dumps(doc)


def test_bundle_carries_the_files_encoder_and_a_trained_decoder(trained):
    folder, _ = trained
    weights = load_bundle(folder / "model").load_state_dicts()[0]
    encoder = read_amaes(FIXTURE).state
    frozen = [k for k in encoder if is_encoder(k)]  # --encoder-lr-scale's encoder: stem, enc_block_*, down_*
    assert len(frozen) > 0.8 * len(encoder)
    for key in frozen:
        assert torch.equal(weights[key], encoder[key]), key
    assert {k.split(".")[0] for k in set(weights) - set(encoder)} == {
        "up_3", "up_2", "up_1", "up_0", "dec_block_3", "dec_block_2", "dec_block_1", "dec_block_0", "out_0"}


def test_the_bundle_segments_onto_the_input_grid(trained):
    _, dataset = trained
    image = dataset / "breast1_image.nrrd"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        prediction = segment(str(image), str(trained[0] / "model"), device="cpu", tta=False)
    finally:
        torch.set_num_threads(threads)
    reference = sitk.ReadImage(str(image))
    assert prediction.GetSize() == reference.GetSize() and prediction.GetSpacing() == reference.GetSpacing()
    assert prediction.GetOrigin() == reference.GetOrigin() and prediction.GetDirection() == reference.GetDirection()
    assert set(np.unique(sitk.GetArrayViewFromImage(prediction))) <= {0, 1}


def test_a_dataset_with_other_channels_than_the_encoder_is_refused():
    stats = ChannelStats(0.0, 1.0, 0.0, 1.0, 0.0)
    fp = Fingerprint(((1.0, 1.0, 1.0),), ((32, 32, 32),), ((32, 32, 32),), (stats, stats))
    with pytest.raises(InputError, match=r"--base amaes_small.pth: the AMAES encoder takes 1 channel\(s\) but the "
                                         r"dataset has 2"):
        plan_from_amaes(read_amaes(FIXTURE), fp, {1: "lesion"}, "cpu")


def test_the_runs_plan_round_trips_for_resume(trained):
    """--resume rebuilds the plan from plan.json: the same preprocessing the bundle records."""
    folder, _ = trained
    plan = plan_from_dict(json.loads((folder / "model.training" / "plan.json").read_text(encoding="utf-8")))
    assert plan.preprocessing_plan() == load_bundle(folder / "model").spec.preprocessing
    assert plan.extra["base"]["format"] == "amaes" and Path(plan.extra["base_source"]) == FIXTURE
