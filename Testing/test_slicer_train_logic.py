"""MedNeXtV2Train's Slicer-facing modules outside Slicer: they import against the plain modules they
use, the logic keeps its settings in the parameter node, and its export path writes a correct
dataset when the scene reads are answered by real images. Slicer is the Segment tests' stand-in."""
from __future__ import annotations

import json
import sys
import unittest
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import SimpleITK as sitk

import slicer_stubs
import slicer_train_paths  # noqa: F401  (MedNeXtV2TrainLib, MedNeXtV2SegmentLib on sys.path)

SLICER_FACING = ("MedNeXtV2TrainLib.scene_cases", "MedNeXtV2TrainLib.logic", "MedNeXtV2TrainLib.run_pages",
                 "MedNeXtV2TrainLib.widget", "MedNeXtV2TrainLib.selftest", "MedNeXtV2Train")


@pytest.fixture()
def slicer_facing(tmp_path, monkeypatch):
    """The Segment tests' Slicer stand-in (Testing/slicer_stubs.py), plus the few names the Train
    module's files import: widget and test base classes, and PythonQt/VTK/sitkUtils as mocks."""
    before = set(sys.modules)
    fake = slicer_stubs.install(str(tmp_path))
    scripted = sys.modules["slicer.ScriptedLoadableModule"]
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget"):
        setattr(scripted, name, type(name, (), {"__init__": lambda self, *args, **kwargs: None}))
    scripted.ScriptedLoadableModuleTest = unittest.TestCase
    fake.util.VTKObservationMixin = type("VTKObservationMixin", (), {"__init__": lambda self: None})
    for name in ("qt", "vtk", "sitkUtils"):
        monkeypatch.setitem(sys.modules, name, mock.MagicMock())
    try:
        yield {name: __import__(name, fromlist=["_"]) for name in SLICER_FACING}
    finally:
        slicer_stubs.uninstall()
        for name in set(sys.modules) - before:  # nothing built on the stand-ins outlives the test
            del sys.modules[name]


def test_slicer_facing_modules_import_and_expose_what_slicer_looks_up(slicer_facing):
    module = slicer_facing["MedNeXtV2Train"]
    for name in ("MedNeXtV2Train", "MedNeXtV2TrainWidget", "MedNeXtV2TrainLogic", "MedNeXtV2TrainTest"):
        assert hasattr(module, name), name
    assert slicer_facing["MedNeXtV2TrainLib.widget"].PAGES == ("Cases", "Labels", "Base model & settings", "Train", "Finish")


def test_settings_live_in_the_parameter_node(slicer_facing):
    from MedNeXtV2TrainLib.settings import TrainSettings

    logic = slicer_facing["MedNeXtV2TrainLib.logic"].MedNeXtV2TrainLogic(segmentLogic=mock.MagicMock())
    assert logic.loadSettings() == TrainSettings()  # nothing saved yet: defaults
    chosen = TrainSettings(model_name="Kidney", base_model="abdomen-ct", device="cuda").with_preset("standard")
    logic.saveSettings(chosen)
    assert logic.loadSettings() == chosen
    logic.getParameterNode().SetParameter("TrainSettings", '{"colour": "red"}')  # a scene from another version
    assert logic.loadSettings() == TrainSettings()
    # the Segment module's policy (issue 14): an unknown key no longer throws the known ones away
    logic.getParameterNode().SetParameter("TrainSettings", '{"colour": "red", "device": "cuda"}')
    assert logic.loadSettings() == TrainSettings(device="cuda")


def test_logic_exports_scene_cases_with_one_label_table(slicer_facing, data_dir, tmp_path, monkeypatch):
    """exportDataset as Slicer runs it, with the two scene reads answered by real images:
    case A has segments [tumor, liver], case B [liver] - liver must be the same value in both."""
    scene_cases = slicer_facing["MedNeXtV2TrainLib.scene_cases"]
    logic = slicer_facing["MedNeXtV2TrainLib.logic"]
    from MedNeXtV2TrainLib.label_table import dataset_labels, default_choices, union_of_segments, BaseLabel
    from MedNeXtV2TrainLib.resume_state import load_state
    from MedNeXtV2TrainLib.settings import TrainSettings

    image = sitk.ReadImage(str(data_dir / "mr-breast" / "breast1_image.nrrd"))
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "mr-breast" / "breast1_label.nrrd"))) > 0
    tissue = (sitk.GetArrayFromImage(image) > 60) & ~lesion
    segments = {"A": [("s1", "tumor", (255, 0, 0)), ("s2", "liver", (0, 255, 0))], "B": [("s9", "liver", (0, 250, 0))]}
    local = {"A": lesion * 1 + tissue * 2, "B": tissue * 1}

    def case_images(case, segment_ids):
        assert segment_ids == [s[0] for s in segments[case.name]], "export in the segmentation's own order"
        label = sitk.GetImageFromArray(local[case.name].astype(np.uint8))
        label.CopyInformation(image)
        return image, label

    monkeypatch.setattr(scene_cases, "case_images", case_images)
    monkeypatch.setattr(scene_cases, "segments_of", lambda node: segments[node])
    cases = [scene_cases.SceneCase(name, None, name) for name in ("A", "B")]
    union = union_of_segments([[(n, c) for _, n, c in segments[k]] for k in ("A", "B")])
    base = [BaseLabel(1, "spleen"), BaseLabel(2, "Liver")]
    labels = dataset_labels(union, default_choices(union, base), base)
    settings = TrainSettings(model_name="Liver", modality="MR")
    job, state = logic.MedNeXtV2TrainLogic.createJob(settings, tmp_path, cases, labels)
    root = Path(state.dataset)
    assert root == job / "dataset" and state.output_bundle == str(job / "liver") and load_state(job).status == "ready"
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    assert meta["labels"] == {"background": 0, "Liver": 1, "tumor": 2}
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr" / "A.nrrd")))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr" / "B.nrrd")))
    assert np.array_equal(a == 1, tissue) and np.array_equal(a == 2, lesion)
    assert np.array_equal(b == 1, tissue) and set(np.unique(b)) == {0, 1}

    # a case that cannot be exported leaves no job behind
    segments["B"] = []
    with pytest.raises(ValueError, match="labelmap has values up to 1 but only 0"):
        logic.MedNeXtV2TrainLogic.createJob(settings, tmp_path, cases, labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["liver"]


def test_training_folder_and_dataset_folder_never_overlap(slicer_facing, tmp_path):
    """Issue 11 for the Train module: a job (and its model) is never written into the user's
    dataset folder; nothing is created on refusal."""
    from MedNeXtV2TrainLib.settings import TrainSettings

    logic = slicer_facing["MedNeXtV2TrainLib.logic"]
    dataset = tmp_path / "Dataset001"
    (dataset / "imagesTr").mkdir(parents=True)
    settings = TrainSettings(model_name="Liver").with_preset("quick")
    for jobs, data in ((dataset, dataset), (dataset / "runs", dataset)):
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        with pytest.raises(ValueError, match="inside the dataset folder"):
            logic.MedNeXtV2TrainLogic.createJob(settings, jobs, datasetDir=data)
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    job, state = logic.MedNeXtV2TrainLogic.createJob(settings, tmp_path, datasetDir=dataset)
    assert state.dataset == str(dataset) and job.parent == tmp_path and job != dataset
