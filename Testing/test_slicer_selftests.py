"""Both modules' Slicer self-tests (what "Reload and Test" and ctest run) under pytest, on slicer-core.

Each test installs what it needs (Testing/slicer_stubs.py: a fresh real scene, the app stand-in,
the module base classes; `qt` as a mock for the widget files) and removes it again, so they pass
in either order and beside the other Slicer tests. The self-tests run the real engine: Segment
with its rigged tiny bundle, Train with a two-epoch fine-tune on synthetic cases.
"""
from __future__ import annotations

import sys
import unittest
from unittest import mock

import pytest

import slicer_stubs
import slicer_train_paths  # noqa: F401  (both module folders and core/ on sys.path)


@pytest.fixture
def slicer_for_selftest(tmp_path, monkeypatch):
    before = set(sys.modules)
    slicer_stubs.install(str(tmp_path / "slicer-temp"))
    monkeypatch.setitem(sys.modules, "qt", mock.MagicMock())  # the widget files' import only
    try:
        yield
    finally:
        slicer_stubs.uninstall()
        for name in set(sys.modules) - before:
            del sys.modules[name]


def run_selftest(moduleName: str, testName: str) -> None:
    """As Slicer's ScriptedLoadableModule.runTest: the module's <Module>Test class, runTest()."""
    module = __import__(moduleName)
    test = getattr(module, testName)()
    assert isinstance(test, unittest.TestCase)
    result = unittest.TestResult()
    unittest.FunctionTestCase(test.runTest).run(result)
    problems = [text for _, text in result.errors + result.failures]
    assert result.testsRun == 1 and not problems, "\n".join(problems)


def test_segment_selftest(slicer_for_selftest):
    import slicer

    run_selftest("MedNeXtV2Segment", "MedNeXtV2SegmentTest")
    assert slicer.app.events > 0


def test_train_selftest(slicer_for_selftest):
    import slicer

    run_selftest("MedNeXtV2Train", "MedNeXtV2TrainTest")
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 4  # 3 cases + the result
