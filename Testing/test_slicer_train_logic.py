"""MedNeXtV2Train's Slicer-facing modules on real Slicer code (slicer-core): they import, the logic
keeps its settings in the module's parameter node, and a case that cannot be exported leaves no job.
Only Qt (`qt`, a mock: the panel is not built here) and slicer_stubs.py's app layer are stand-ins;
the export from real segmentation nodes is in test_slicer_train_mrml.py."""
from __future__ import annotations

import sys
from unittest import mock

import numpy as np
import pytest

import slicer_stubs

SLICER_FACING = ("MedNeXtV2TrainLib.scene_cases", "MedNeXtV2TrainLib.logic", "MedNeXtV2TrainLib.run_pages",
                 "MedNeXtV2TrainLib.widget", "MedNeXtV2TrainLib.selftest", "MedNeXtV2Train")


@pytest.fixture()
def slicer_facing(tmp_path, monkeypatch):
    """Real slicer with the app stand-in; `qt` a mock, for the widget files' imports only."""
    before = set(sys.modules)
    slicer_stubs.install(str(tmp_path / "slicer-temp"))
    monkeypatch.setitem(sys.modules, "qt", mock.MagicMock())
    try:
        yield {name: __import__(name, fromlist=["_"]) for name in SLICER_FACING}
    finally:
        slicer_stubs.uninstall()
        for name in set(sys.modules) - before:  # nothing built on the qt mock outlives the test
            del sys.modules[name]


def test_slicer_facing_modules_import_and_expose_what_slicer_looks_up(slicer_facing):
    module = slicer_facing["MedNeXtV2Train"]
    for name in ("MedNeXtV2Train", "MedNeXtV2TrainWidget", "MedNeXtV2TrainLogic", "MedNeXtV2TrainTest"):
        assert hasattr(module, name), name
    assert slicer_facing["MedNeXtV2TrainLib.widget"].PAGES == ("Cases", "Labels", "Base model & settings", "Train", "Finish")


def test_settings_live_in_the_parameter_node(slicer_facing):
    from MedNeXtV2TrainLib.settings import TrainSettings

    logic = slicer_facing["MedNeXtV2TrainLib.logic"].MedNeXtV2TrainLogic()
    assert logic.loadSettings() == TrainSettings()  # nothing saved yet: defaults
    chosen = TrainSettings(model_name="Kidney", base_model="abdomen-ct", device="cuda").with_preset("standard")
    logic.saveSettings(chosen)
    assert logic.loadSettings() == chosen
    logic.getParameterNode().SetParameter("TrainSettings", '{"colour": "red"}')  # a scene from another version
    assert logic.loadSettings() == TrainSettings()
    # the Segment module's policy: an unknown key is ignored, the known ones are kept
    logic.getParameterNode().SetParameter("TrainSettings", '{"colour": "red", "device": "cuda"}')
    assert logic.loadSettings() == TrainSettings(device="cuda")


def test_a_case_that_cannot_be_exported_leaves_no_job(slicer_facing, data_dir, tmp_path):
    """The second case is a colour (3-component) volume: the export refuses it, the job folder goes."""
    import slicer
    from MedNeXtV2TrainLib.dataset_layout import DatasetExportError
    from MedNeXtV2TrainLib.label_table import DatasetLabel
    from MedNeXtV2TrainLib.settings import TrainSettings

    scene_cases = slicer_facing["MedNeXtV2TrainLib.scene_cases"]
    logic = slicer_facing["MedNeXtV2TrainLib.logic"].MedNeXtV2TrainLogic
    good = slicer_stubs.load_volume(data_dir / "mr-breast" / "breast1_image.nrrd", "Breast")
    rgb = np.repeat(slicer.util.arrayFromVolume(good)[..., None], 3, axis=-1)
    matrix = slicer.util.vtkMatrixFromArray(slicer_stubs.ijk_to_ras(good))
    colour = slicer.util.addVolumeFromArray(rgb, matrix, "Colour", "vtkMRMLVectorVolumeNode")
    cases = []
    for volume in (good, colour):
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(good)
        segmentId = segmentation.GetSegmentation().AddEmptySegment("", "lesion", (1.0, 0.0, 0.0))
        mask = slicer.util.arrayFromVolume(good) > 100
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype("uint8"), segmentation, segmentId, good)
        cases.append(scene_cases.SceneCase(volume.GetName(), volume, segmentation))
    labels = [DatasetLabel(1, "lesion", (255, 0, 0), ("lesion",), False)]
    with pytest.raises(DatasetExportError, match="3 components per voxel"):
        logic.createJob(TrainSettings(model_name="Lesion", modality="MR"), tmp_path / "jobs", cases, labels)
    assert list((tmp_path / "jobs").iterdir()) == []


def test_training_folder_and_dataset_folder_never_overlap(slicer_facing, tmp_path):
    """A job (and its model) is never written into the user's
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
