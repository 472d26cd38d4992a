"""Dependency plan: what gets installed, and the constraints that protect Slicer's own packages."""
from __future__ import annotations

import importlib.metadata

import slicer_segment_paths  # noqa: F401
from MedNeXtV2SegmentLib.install import (PIP_PACKAGES, SLICER_BUNDLED, InstallPlan, confirmation_text, plan_install,
                                         protected_constraints)


def test_plan_lists_only_what_is_missing():
    present = {"torch", "nrrd"}
    plan = plan_install(lambda name: object() if name in present else None)
    assert plan == InstallPlan(torch=False, pip=("safetensors>=0.4",))
    everything = plan_install(lambda name: None)
    assert everything.torch and everything.pip == ("pynrrd>=1.0", "safetensors>=0.4")
    assert plan_install(lambda name: object()).empty


def test_never_installs_slicers_own_packages():
    names = {name.lower() for name in PIP_PACKAGES}
    assert not names & {"numpy", "simpleitk", "requests", "torch"}  # torch comes from PyTorchUtils


def test_constraints_pin_the_installed_bundled_versions():
    text = protected_constraints()
    pins = dict(line.split("==") for line in text.splitlines() if not line.startswith("#"))
    for name in SLICER_BUNDLED:
        assert pins[name] == importlib.metadata.version(name)


def test_constraints_skip_missing_packages():
    def version_of(name):
        if name == "requests":
            raise importlib.metadata.PackageNotFoundError(name)
        return "1.2.3"
    assert protected_constraints(version_of).splitlines()[1:] == ["numpy==1.2.3", "SimpleITK==1.2.3"]


def test_the_question_lists_every_package():
    text = confirmation_text(InstallPlan(torch=True, pip=("pynrrd>=1.0", "safetensors>=0.4")))
    for item in ("torch>=2.1", "PyTorch extension", "pynrrd>=1.0", "safetensors>=0.4", "numpy, SimpleITK and requests"):
        assert item in text


# -- the Slicer half, with the few Slicer/Qt calls it makes replaced -----------------------------
import subprocess  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from MedNeXtV2SegmentLib.install import InstallError, InstallLogic  # noqa: E402


class _Dialog:
    def __init__(self, *args):
        self.shown = False

    def setCancelButton(self, button): pass
    def setWindowTitle(self, title): pass
    def setMinimumDuration(self, ms): pass
    def show(self): self.shown = True
    def close(self): self.shown = False


@pytest.fixture
def fake_slicer(monkeypatch):
    calls = types.SimpleNamespace(confirm=[], pip=[], answer=True, pip_error=None)

    def confirm(text, windowTitle=None):
        calls.confirm.append(text)
        return calls.answer

    def pip_install(requirements):
        constraints = Path(requirements[requirements.index("-c") + 1])
        calls.pip.append((list(requirements), constraints.read_text(encoding="utf-8")))
        print("Collecting safetensors>=0.4")
        if calls.pip_error:
            print("ERROR: No matching distribution found for safetensors>=0.4")
            raise subprocess.CalledProcessError(1, ["pip"])

    util = types.SimpleNamespace(confirmOkCancelDisplay=confirm, pip_install=pip_install,
                                 WaitCursor=nullcontext, mainWindow=lambda: None)
    app = types.SimpleNamespace(commandOptions=lambda: types.SimpleNamespace(testingEnabled=False),
                                processEvents=lambda: None)
    monkeypatch.setitem(sys.modules, "slicer", types.SimpleNamespace(util=util, app=app))
    monkeypatch.setitem(sys.modules, "qt", types.SimpleNamespace(QProgressDialog=_Dialog))
    return calls


def test_declining_installs_nothing(fake_slicer):
    fake_slicer.answer = False
    assert InstallLogic(find_spec=lambda name: None).ensure() is False
    assert len(fake_slicer.confirm) == 1 and fake_slicer.pip == []


def test_nothing_missing_asks_nothing(fake_slicer):
    assert InstallLogic(find_spec=lambda name: object()).ensure() is True
    assert fake_slicer.confirm == []


def test_pip_runs_once_with_protecting_constraints_and_cleans_up(fake_slicer):
    installed = {"torch", "nrrd"}
    logic = InstallLogic(find_spec=lambda name: object() if name in installed else None)
    with pytest.raises(InstallError, match="still cannot be imported: safetensors"):
        logic.ensure()  # the fake pip "succeeds" without installing: reported, not ignored
    (requirements, constraints), = fake_slicer.pip
    assert requirements[:1] == ["safetensors>=0.4"] and requirements[1] == "-c"
    assert f"numpy=={importlib.metadata.version('numpy')}" in constraints
    assert not Path(requirements[2]).exists(), "the constraints file is removed"


def test_pip_failure_shows_pips_output(fake_slicer):
    fake_slicer.pip_error = True
    logic = InstallLogic(find_spec=lambda name: None if name == "safetensors" else object())
    with pytest.raises(InstallError) as info:
        logic.ensure(askConfirmation=False)
    assert "No matching distribution" in info.value.details
    assert fake_slicer.confirm == []


def test_missing_pytorch_extension_is_explained(fake_slicer, monkeypatch):
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # import fails
    with pytest.raises(InstallError, match="Install 'PyTorch' from the Extensions Manager"):
        InstallLogic(find_spec=lambda name: None if name == "torch" else object()).ensure()


def test_torch_goes_through_pytorchutils(fake_slicer, monkeypatch):
    seen = {}

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                         torchvisionVersionRequirement=None):
            seen.update(askConfirmation=askConfirmation, requirement=torchVersionRequirement)
            installed.add("torch")
            return object()

    installed = {"nrrd", "safetensors"}
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    assert InstallLogic(find_spec=lambda name: object() if name in installed else None).ensure() is True
    assert seen == {"askConfirmation": False, "requirement": ">=2.1"}  # we asked once already
    assert fake_slicer.pip == [] and "torch>=2.1" in fake_slicer.confirm[0]


def test_an_old_torch_is_an_upgrade_not_a_pass(fake_slicer, monkeypatch):
    """Issue 12 defect 5: torch 1.13 left by another extension used to pass the check."""
    from MedNeXtV2SegmentLib.install import meets_requirement, version_tuple

    assert version_tuple("2.1.0+cu118") == (2, 1, 0) and version_tuple("2.0.0rc1") == (2, 0, 0)
    assert meets_requirement("2.13.0+cpu") and meets_requirement("2.1") and not meets_requirement("2.0.1")
    everything_found = lambda name: object()  # noqa: E731
    versions = {"torch": "1.13.1+cu117"}
    plan = plan_install(everything_found, versions.get)
    assert plan.torch and plan.old_torch == "1.13.1+cu117" and not plan.empty
    assert "upgrade from the installed 1.13.1+cu117" in confirmation_text(plan)
    assert plan_install(everything_found, {"torch": "2.13.0"}.get).empty

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            versions["torch"] = "2.5.1"  # what pip's "torch>=2.1" does to an old torch
            return object()

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    logic = InstallLogic(find_spec=everything_found, version_of=versions.get)
    with pytest.raises(InstallError, match="too old"):
        logic.require()
    assert logic.ensure() is True and "upgrade" in fake_slicer.confirm[0]
    logic.require()  # now fine


def test_require_is_the_check_both_logics_make(fake_slicer, monkeypatch, forget_new_modules):
    """Issue 12 defect 1: the Train logic never ran the install step; it now refuses to start the
    engine until the packages are there, and its panel installs them (the same InstallLogic)."""
    sls = types.ModuleType("slicer.ScriptedLoadableModule")
    sls.ScriptedLoadableModuleLogic = type("ScriptedLoadableModuleLogic", (), {"__init__": lambda self: None})
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", sls)
    import slicer_train_paths  # noqa: F401
    from MedNeXtV2SegmentLib.logic import MedNeXtV2SegmentLogic
    from MedNeXtV2TrainLib.logic import MedNeXtV2TrainLogic

    started = []
    missing = InstallLogic(find_spec=lambda name: None if name == "torch" else object())
    from MedNeXtV2SegmentLib.engine_client import EngineClient

    engine = EngineClient(python="py", installLogic=missing, processFactory=lambda *a: started.append(a))
    segment, train = MedNeXtV2SegmentLogic(engine), MedNeXtV2TrainLogic(engine)
    with pytest.raises(InstallError, match=r"torch>=2\.1"):
        train.startTraining(Path("job"))
    with pytest.raises(InstallError, match=r"torch>=2\.1"):
        segment.start(object(), None)
    assert started == []
