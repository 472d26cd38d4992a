"""A real training run on the real MR tissue map (the real data's mr-brain-tissue), on the CPU.

The scan is cut front to back (the template is left-right symmetric, so a left/right split would
leak): v2-tiny learns grey/white matter on the posterior 60% of the brain and is judged on the
anterior 40%. About a minute on 2 cores.

Dice threshold, 0.6 per label and 0.7 mean: a model that learned nothing scores far below it.
Calling every brain voxel white matter gives white-matter Dice ~0.5 and grey-matter Dice 0; a
random 3-class guess is below 0.4 for both. Clearing 0.6 on anatomy never seen in training
(frontal lobes, learnt from occipital/parietal lobes and cerebellum) needs the tissue contrast
and shapes to have been learnt. Longer runs reach ~0.8 (grey) and ~0.9 (white).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from mednextv2.bundle import load_bundle
from mednextv2.inference.pipeline import segment
from mednextv2.train import TrainOptions, run_training
from mednextv2.train.demo import split_scan
from mednextv2.train.evaluate import dice_per_class

MIN_DICE, MIN_MEAN_DICE = 0.6, 0.7


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("brain")
    tissue = data_dir / "mr-brain-tissue"
    dataset, test_image, test_label = split_scan(folder / "data", tissue / "icbm152_2009a_t1.nii.gz",
                                                 tissue / "icbm152_2009a_tissue.nii.gz", list_heldout=True)
    threads = torch.get_num_threads()
    try:  # small tensors: one thread beats two on a shared 2-core machine
        result = run_training(TrainOptions(
            dataset=str(dataset), output=str(folder / "model"), preset="v2-tiny", epochs=3, iterations=40,
            spacing=(2.0, 2.0, 2.0), patch=(32, 32, 32), device="cpu", val_cases=("anterior",), lr=3e-3,
            progress="none", seed=0, threads=1))
    finally:
        torch.set_num_threads(threads)
    return folder, result, test_image, test_label


def test_loss_falls_and_heldout_dice_clears_threshold(trained):
    folder, result, _, _ = trained
    losses = [row.train_loss for row in result.history]
    assert len(losses) == 3 and result.epochs == 3
    assert losses[-1] < 0.8 * losses[0], losses
    assert set(result.dice) == {"grey matter", "white matter"}
    assert min(result.dice.values()) >= MIN_DICE, result.dice
    assert np.mean(list(result.dice.values())) >= MIN_MEAN_DICE, result.dice


def test_bundle_records_plan_provenance_and_metrics(trained):
    folder, result, _, _ = trained
    bundle = load_bundle(result.bundle)
    assert [(lab.value, lab.name) for lab in bundle.labels] == [(1, "grey matter"), (2, "white matter")]
    assert bundle.network.deep_supervision is False and bundle.n_classes == 3
    assert bundle.preprocessing.target_spacing == (2.0, 2.0, 2.0)
    assert bundle.preprocessing.normalization[0].scheme == "zscore"
    assert bundle.inference.patch_size == (32, 32, 32)
    provenance = bundle.spec.provenance.to_json()
    assert provenance["metrics"]["dice"] == pytest.approx(result.dice)
    assert provenance["metrics"]["epoch"] == result.best_epoch
    assert provenance["training"]["epochs"] == 3 and provenance["training"]["world_size"] == 1
    # Shareable: the dataset by folder name and content hash, never the training machine's paths.
    assert provenance["training"]["dataset"] == "data" and len(provenance["training"]["dataset_sha256"]) == 64
    text = (result.bundle / "model.json").read_text(encoding="utf-8")
    assert str(folder) not in text and str(Path.home()) not in text and '"/' not in text
    with open(result.bundle / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert (result.bundle / "training_curve.png").stat().st_size > 1000
    plan = json.loads((folder / "model.training" / "plan.json").read_text(encoding="utf-8"))
    assert plan["crop_to_nonzero"] is True  # skull-stripped: most of the box is zero


def test_segment_uses_the_bundle_on_the_heldout_scan_grid(trained):
    _, result, test_image, test_label = trained
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        prediction = segment(str(test_image), str(result.bundle), device="cpu", tta=False)
    finally:
        torch.set_num_threads(threads)
    reference = sitk.ReadImage(str(test_label))
    assert prediction.GetSize() == reference.GetSize()
    assert prediction.GetOrigin() == reference.GetOrigin() and prediction.GetDirection() == reference.GetDirection()
    scores = dice_per_class(sitk.GetArrayViewFromImage(prediction), sitk.GetArrayViewFromImage(reference), 3)
    # On the original 1 mm grid the 2 mm model loses some boundary detail: a slightly lower bar.
    assert min(scores) >= MIN_DICE - 0.05, scores


def test_trained_bundle_installs_into_the_local_model_cache(trained, tmp_path, capsys):
    from mednextv2.cli import main

    _, result, _, _ = trained
    assert main(["models", "--home", str(tmp_path), "import", str(result.bundle)]) == 0
    capsys.readouterr()
    assert main(["models", "--home", str(tmp_path), "path", "model"]) == 0
    installed = capsys.readouterr().out.strip().splitlines()[-1]
    assert load_bundle(installed).spec.provenance.metrics["dice"] == pytest.approx(result.dice)
