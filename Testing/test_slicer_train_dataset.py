"""MedNeXtV2Train: the exported dataset folder, written from real scans, read back by the engine."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from segment_fixtures import write_image
from MedNeXtV2TrainLib.dataset_layout import DatasetExportError, DatasetWriter, remap_labels, safe_case_ids  # noqa: E402
from MedNeXtV2TrainLib.label_table import BASE, IGNORE, NEW, BaseLabel, LabelChoice, dataset_labels, union_of_segments, value_by_segment  # noqa: E402


@pytest.fixture()
def staged_cases(data_dir, tmp_path):
    """Two real MR cases staged like the Slicer logic stages them, with different local segment orders.

    breast: local 1 = lesion. brain: local 1 = brain tissue (image above a threshold, lesion
    excluded), local 2 = lesion, local 3 = a "marker" segment the user leaves out.
    """
    stage = tmp_path / "stage"
    stage.mkdir()
    breast_img = sitk.ReadImage(str(data_dir / "mr-breast" / "breast1_image.nrrd"))
    breast_lbl = sitk.ReadImage(str(data_dir / "mr-breast" / "breast1_label.nrrd"))
    brain_img = sitk.ReadImage(str(data_dir / "mr-brain-lesion" / "brain1_image.nrrd"))
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "mr-brain-lesion" / "brain1_label.nrrd"))) > 0
    tissue = (sitk.GetArrayFromImage(brain_img) > 200) & ~lesion
    local = np.zeros(lesion.shape, np.uint8)
    local[tissue] = 1
    local[lesion] = 2
    local[0, :4, :4] = 3
    brain_lbl = sitk.GetImageFromArray(local)
    brain_lbl.CopyInformation(brain_img)
    return {
        "breast": (write_image(breast_img, stage / "breast_image.nrrd"), write_image(breast_lbl, stage / "breast_label.nrrd"),
                   ["lesion"]),
        "brain": (write_image(brain_img, stage / "brain_image.nrrd"), write_image(brain_lbl, stage / "brain_label.nrrd"),
                  ["brain", "Lesion", "marker"]),
        "arrays": {"brain_local": local, "breast_lesion": sitk.GetArrayFromImage(breast_lbl) > 0},
    }


def _labels():
    union = union_of_segments([[("lesion", (255, 0, 0))], [("brain", (0, 200, 0)), ("Lesion", (250, 0, 0)), ("marker", (1, 1, 1))]])
    base = [BaseLabel(1, "brain", (10, 20, 30)), BaseLabel(2, "csf")]
    choices = [LabelChoice("lesion", NEW, "lesion"), LabelChoice("brain", BASE, "brain"),
               LabelChoice("Lesion", NEW, "lesion"), LabelChoice("marker", IGNORE)]
    return dataset_labels(union, choices, base)


def test_export_writes_nnunet_layout_with_consistent_values(staged_cases, tmp_path):
    labels = _labels()
    assert [(l.value, l.name) for l in labels] == [(1, "brain"), (2, "lesion")]
    values = value_by_segment(labels)
    root = tmp_path / "jobs" / "dataset"
    writer = DatasetWriter(root, labels, "MR", title="test")
    image, label, names = staged_cases["breast"]
    writer.add_case("breast", image, label, names, values)  # files, as from a folder
    image, label, names = staged_cases["brain"]
    writer.add_case("brain", sitk.ReadImage(str(image)), sitk.ReadImage(str(label)), names, values)  # images, as from Slicer
    assert not root.exists(), "the dataset must appear only when complete"
    assert writer.finish() == root
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == ["brain_0000.nrrd", "breast_0000.nrrd"]
    assert sorted(p.name for p in (root / "labelsTr").iterdir()) == ["brain.nrrd", "breast.nrrd"]
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    assert meta["labels"] == {"background": 0, "brain": 1, "lesion": 2}
    assert meta["channel_names"] == {"0": "MR"} and meta["numTraining"] == 2 and meta["file_ending"] == ".nrrd"
    assert meta["label_colors"]["brain"] == [10, 20, 30]
    assert [p.name for p in root.parent.iterdir()] == ["dataset"], "no partial folder left behind"

    brain = sitk.ReadImage(str(root / "labelsTr" / "brain.nrrd"))
    brain_img = sitk.ReadImage(str(root / "imagesTr" / "brain_0000.nrrd"))
    local = staged_cases["arrays"]["brain_local"]
    out = sitk.GetArrayFromImage(brain)
    assert np.array_equal(out[local == 1], np.full((local == 1).sum(), 1))  # brain -> 1
    assert np.all(out[local == 2] == 2) and np.all(out[local == 3] == 0)   # lesion -> 2, marker left out
    assert brain.GetDirection() == brain_img.GetDirection() and brain.GetOrigin() == brain_img.GetOrigin()
    assert brain_img.GetDirection()[4] == -1.0, "the flipped axis of the real scan survives the export"
    breast = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr" / "breast.nrrd")))
    assert set(np.unique(breast)) == {0, 2}, "lesion is value 2 in every case, although local value 1 here"
    assert np.array_equal(breast == 2, staged_cases["arrays"]["breast_lesion"])
    original = sitk.ReadImage(str(staged_cases["brain"][0]))
    assert np.array_equal(sitk.GetArrayViewFromImage(brain_img), sitk.GetArrayViewFromImage(original))


def test_engine_reads_the_exported_dataset(staged_cases, tmp_path):
    from mednextv2.train import datasets
    labels = _labels()
    root = tmp_path / "dataset"
    with DatasetWriter(root, labels, "MR") as writer:
        for case_id in ("breast", "brain"):
            image, label, names = staged_cases[case_id]
            writer.add_case(case_id, image, label, names, value_by_segment(labels))
        writer.finish()
    found = datasets.discover_dataset(root)
    assert [c.name for c in found.cases] == ["brain", "breast"]
    assert found.labels == {1: "brain", 2: "lesion"} and found.channels == ("MR",)


def test_label_off_the_image_grid_is_refused_and_nothing_is_left(staged_cases, tmp_path):
    image, label, names = staged_cases["breast"]
    moved = sitk.ReadImage(str(label))
    moved.SetOrigin([o + 5.0 for o in moved.GetOrigin()])
    bad = write_image(moved, tmp_path / "moved_label.nrrd")
    labels = _labels()
    root = tmp_path / "out" / "dataset"
    with pytest.raises(DatasetExportError, match="breast: the labelmap is not on the image's grid"):
        with DatasetWriter(root, labels, "MR") as writer:
            writer.add_case("breast", image, bad, names, value_by_segment(labels))
    assert list((tmp_path / "out").iterdir()) == []


def test_existing_dataset_is_kept_unless_overwriting(staged_cases, tmp_path):
    root = tmp_path / "dataset"
    root.mkdir()
    (root / "keep.txt").write_text("x")
    with pytest.raises(DatasetExportError, match="already exists"):
        DatasetWriter(root, _labels(), "MR")
    writer = DatasetWriter(root, _labels(), "MR", overwrite=True)
    image, label, names = staged_cases["breast"]
    writer.add_case("breast", image, label, names, value_by_segment(_labels()))
    writer.finish()
    assert not (root / "keep.txt").exists() and (root / "labelsTr" / "breast.nrrd").exists()


def test_dataset_folder_gets_the_users_usual_mode(staged_cases, tmp_path):
    """Built under a fresh name by mednextv2.atomic: mkdtemp's private 0700 must not survive the rename."""
    import os
    from mednextv2.atomic import default_mode
    root = tmp_path / "dataset"
    with DatasetWriter(root, _labels(), "MR") as writer:
        image, label, names = staged_cases["breast"]
        writer.add_case("breast", image, label, names, value_by_segment(_labels()))
        writer.finish()
    assert root.stat().st_mode & 0o777 == default_mode(0o777) and default_mode(0o777) != 0o700
    assert [p.name for p in tmp_path.iterdir() if p.name != "stage"] == ["dataset"]


def test_a_folder_that_appears_during_the_export_is_not_replaced(staged_cases, tmp_path):
    """Never delete what we did not create: the folder was free when the export began."""
    root = tmp_path / "dataset"
    with pytest.raises(DatasetExportError, match="appeared during the export"):
        with DatasetWriter(root, _labels(), "MR") as writer:
            image, label, names = staged_cases["breast"]
            writer.add_case("breast", image, label, names, value_by_segment(_labels()))
            root.mkdir()
            (root / "theirs.txt").write_text("x")
            writer.finish()
    assert [p.name for p in root.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "stage"], "the partial folder is removed"


def test_remap_rejects_values_without_a_segment_name():
    with pytest.raises(DatasetExportError, match="values up to 3 but only 2"):
        remap_labels(np.array([[0, 1, 3]]), ["a", "b"], {"a": 1, "b": 2})
    out = remap_labels(np.array([[0, 1, 2]]), ["a", "b"], {"b": 1})
    assert out.tolist() == [[0, 0, 1]] and out.dtype == np.uint8


def test_case_ids_are_file_safe_and_unique():
    assert safe_case_ids(["CT chest", "CT chest", "ct/chest", "", "Ä"]) == ["CT_chest", "CT_chest_2", "ct_chest_3", "case", "case_2"]
