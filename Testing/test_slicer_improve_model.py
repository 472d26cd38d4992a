""""Improve this model": the Segment panel hands its last result and the model that made it to the
Train module, through the Train module widget's public `improveModel`, on Slicer's real core.

The panels themselves need Slicer's Qt (PythonQt), so `qt` is a mock for the widget files' imports
and the two slicer.util calls that need Slicer's module manager (selectModule, getModuleWidget)
are recorded; the nodes, the scene and the module classes are the real ones.
"""
from __future__ import annotations

import sys
from unittest import mock

import pytest

import slicer_stubs
import slicer_train_paths  # noqa: F401  (both module folders and core/ on sys.path)


@pytest.fixture
def modules(tmp_path, monkeypatch):
    before = set(sys.modules)
    slicer = slicer_stubs.install(str(tmp_path / "slicer-temp"))
    monkeypatch.setitem(sys.modules, "qt", mock.MagicMock())  # the widget files' import only
    try:
        from MedNeXtV2SegmentLib.widget import SegmentPanel
        from MedNeXtV2Train import MedNeXtV2TrainWidget

        yield slicer, SegmentPanel, MedNeXtV2TrainWidget
    finally:
        slicer_stubs.uninstall()
        for name in set(sys.modules) - before:
            del sys.modules[name]


def test_improve_opens_train_with_the_result_and_its_model(modules, data_dir, monkeypatch):
    slicer, SegmentPanel, MedNeXtV2TrainWidget = modules
    volume = slicer_stubs.load_volume(data_dir / "mr-breast" / "breast1_image.nrrd", "breast1")
    result = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "breast1 lesion")

    calls = []
    trainWidget = MedNeXtV2TrainWidget.__new__(MedNeXtV2TrainWidget)  # as Slicer made it; setup() needs Qt
    trainWidget.wizard = mock.Mock(improveModel=lambda *args: calls.append(("improveModel",) + args))
    monkeypatch.setattr(slicer.util, "selectModule", lambda name: calls.append(("selectModule", name)), raising=False)
    monkeypatch.setattr(slicer.util, "getModuleWidget", lambda name: {"MedNeXtV2Train": trainWidget}[name], raising=False)

    panel = SegmentPanel.__new__(SegmentPanel)
    panel.ui, panel.run, panel.lastResult = mock.Mock(), None, None
    panel.updateButtons = lambda: None
    panel.onImproveModel()  # no run yet: nothing to improve
    assert calls == []

    panel.lastResult = (volume, result, "breast-lesion-mr")  # what onTimer keeps after a segment run
    panel.onImproveModel()
    assert calls == [("selectModule", "MedNeXtV2Train"), ("improveModel", volume, result, "breast-lesion-mr")]

    slicer.mrmlScene.RemoveNode(result)  # the user deleted the result: the action has nothing to train on
    assert panel.improvableResult() is None
    panel.onImproveModel()
    assert len(calls) == 2
