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


def selftest_problems(moduleName: str, testName: str) -> str:
    module = __import__(moduleName)
    result = unittest.TestResult()
    unittest.FunctionTestCase(getattr(module, testName)().runTest).run(result)
    return "\n".join(text for _, text in result.errors + result.failures)


@pytest.mark.parametrize("moduleName, testName", [("MedNeXtV2Segment", "MedNeXtV2SegmentTest"),
                                                  ("MedNeXtV2Train", "MedNeXtV2TrainTest")])
def test_selftest_never_installs_torch_silently(slicer_for_selftest, monkeypatch, moduleName, testName):
    """Reload and Test (or ctest on a build server) without torch: no multi-GB download unasked.
    In testing mode it stops with a message naming what is missing; in a running Slicer it asks,
    and a "no" stops it with a message too."""
    import slicer
    from MedNeXtV2SegmentLib.install import InstallLogic, InstallPlan

    installs, questions = [], []
    monkeypatch.setattr(InstallLogic, "plan", lambda self: InstallPlan(torch=True, pip=()))
    monkeypatch.setitem(sys.modules, "PyTorchUtils", mock.MagicMock(
        PyTorchUtilsLogic=lambda: mock.MagicMock(installTorch=lambda **k: installs.append(k))))
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay",
                        lambda text, *a, **k: questions.append(text) or False, raising=False)
    monkeypatch.setattr(slicer.util, "pip_install", lambda *a, **k: installs.append(a), raising=False)

    problems = selftest_problems(moduleName, testName)  # the stand-in app runs in testing mode, as ctest does
    assert "testing mode" in problems and "torch>=" in problems
    assert installs == [] and questions == []

    monkeypatch.setattr(slicer.app, "testingEnabled", lambda: False)  # Reload and Test in a running Slicer
    problems = selftest_problems(moduleName, testName)
    assert len(questions) == 1 and "torch>=" in questions[0]
    assert "self-test needs PyTorch" in problems and "were not installed" in problems
    assert installs == []
