"""Dependency plan: what gets installed, and the constraints that protect Slicer's own packages."""
from __future__ import annotations

import importlib.metadata

from MedNeXtV2SegmentLib.install import (PIP_PACKAGES, SLICER_BUNDLED, InstallPlan, confirmation_text, plan_install,
                                         protected_constraints)


def test_plan_lists_only_what_is_missing():
    present = {"torch", "nrrd"}
    plan = plan_install(lambda name: object() if name in present else None)
    assert (plan.torch, plan.pip, plan.old_torch, plan.blocker) == (False, ("safetensors>=0.4",), "", "")
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
    for item in ("torch>=2.6", "PyTorch extension", "pynrrd>=1.0", "safetensors>=0.4", "numpy, SimpleITK and requests"):
        assert item in text


# -- the Slicer half, with the few Slicer/Qt calls it makes replaced -----------------------------
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import slicer_stubs  # noqa: E402  (the slicer.packaging stand-in)

from MedNeXtV2SegmentLib.install import InstallError, InstallLogic  # noqa: E402


class _Dialog:
    opened = []  # the messages of every progress dialog this module opened

    def __init__(self, message="", *args):
        self.shown = False
        _Dialog.opened.append(message)

    def setCancelButton(self, button): pass
    def setWindowTitle(self, title): pass
    def setMinimumDuration(self, ms): pass
    def show(self): self.shown = True
    def close(self): self.shown = False


@pytest.fixture
def fake_slicer(monkeypatch):
    calls = types.SimpleNamespace(confirm=[], pip=[], answer=True, pip_error=None, testing=False, errors=[])
    _Dialog.opened = []

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

    def confirm_ok_cancel(text, windowTitle=None, **kwargs):  # Slicer's signature: (text, windowTitle=None, parent=None, **kwargs)
        return confirm(text, windowTitle)

    util = types.SimpleNamespace(confirmOkCancelDisplay=confirm_ok_cancel, pip_install=pip_install,
                                 WaitCursor=nullcontext, mainWindow=lambda: None,
                                 errorDisplay=lambda text, **kwargs: calls.errors.append(text))
    app = types.SimpleNamespace(commandOptions=lambda: types.SimpleNamespace(testingEnabled=calls.testing),
                                testingEnabled=lambda: calls.testing, processEvents=lambda: None)
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
    slicer_5_8 = {"numpy": "1.26.4", "torch": "2.8.0"}.get
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    assert InstallLogic(find_spec=lambda name: object() if name in installed else None,
                        version_of=slicer_5_8).ensure() is True
    assert seen == {"askConfirmation": False, "requirement": ">=2.6"}  # we asked once already
    assert fake_slicer.pip == [] and "torch>=2.6" in fake_slicer.confirm[0]


def test_a_torch_older_than_the_tested_minimum_is_an_upgrade(fake_slicer, monkeypatch):
    """The engine tests fail with torch 2.1.2, 2.2.2, 2.3.1 and 2.5.1 (nnU-Net checkpoints need
    torch.serialization.safe_globals as in 2.6; 2.2 and older also fail on numpy 2) and pass with 2.6.0."""
    linux = lambda: ("Linux", "x86_64")  # noqa: E731
    versions = {"numpy": "2.0.2", "torch": "2.5.1+cu124"}
    plan = plan_install(lambda name: object(), versions.get, linux)
    assert plan.torch and plan.old_torch == "2.5.1+cu124"
    assert "torch>=2.6: upgrade from the installed 2.5.1+cu124" in confirmation_text(plan)
    assert plan_install(lambda name: object(), {"numpy": "1.26.4", "torch": "2.6.0"}.get, linux).empty
    assert plan_install(lambda name: object(), {"numpy": "2.4.6", "torch": "2.13.0"}.get, linux).empty


def test_an_old_torch_is_an_upgrade_not_a_pass(fake_slicer, monkeypatch):
    """A torch 1.13 left by another extension is too old: it is upgraded, not accepted."""
    from MedNeXtV2SegmentLib.install import meets_requirement, version_tuple

    assert version_tuple("2.1.0+cu118") == (2, 1, 0) and version_tuple("2.0.0rc1") == (2, 0, 0)
    assert meets_requirement("2.13.0+cpu") and meets_requirement("2.6") and not meets_requirement("2.5.1")
    everything_found = lambda name: object()  # noqa: E731
    versions = {"torch": "1.13.1+cu117"}
    plan = plan_install(everything_found, versions.get)
    assert plan.torch and plan.old_torch == "1.13.1+cu117" and not plan.empty
    assert "upgrade from the installed 1.13.1+cu117" in confirmation_text(plan)
    assert plan_install(everything_found, {"torch": "2.13.0"}.get).empty

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            versions["torch"] = "2.8.0"  # what pip's "torch>=2.6" does to an old torch
            return object()

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    logic = InstallLogic(find_spec=everything_found, version_of=versions.get)
    with pytest.raises(InstallError, match="too old"):
        logic.require()
    assert logic.ensure() is True and "upgrade" in fake_slicer.confirm[0]
    logic.require()  # now fine


def test_require_is_the_check_both_logics_make(fake_slicer, monkeypatch, forget_new_modules):
    """The Train logic refuses to start the engine until the packages are there, and its panel
    installs them (the same InstallLogic)."""
    sls = types.ModuleType("slicer.ScriptedLoadableModule")
    sls.ScriptedLoadableModuleLogic = type("ScriptedLoadableModuleLogic", (), {"__init__": lambda self: None})
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", sls)
    from MedNeXtV2SegmentLib.logic import MedNeXtV2SegmentLogic
    from MedNeXtV2TrainLib.logic import MedNeXtV2TrainLogic

    started = []
    missing = InstallLogic(find_spec=lambda name: None if name == "torch" else object())
    from MedNeXtV2SegmentLib.engine_client import EngineClient

    engine = EngineClient(python="py", installLogic=missing, processFactory=lambda *a: started.append(a))
    segment, train = MedNeXtV2SegmentLogic(engine), MedNeXtV2TrainLogic(engine)
    with pytest.raises(InstallError, match=r"torch>=2\.6"):
        train.startTraining(Path("job"))
    with pytest.raises(InstallError, match=r"torch>=2\.6"):
        segment.start(object(), None)
    assert started == []


# -- Intel Macs: PyPI's last torch there (2.2.2) is too old, and fails on numpy 2 -------------------
@pytest.mark.parametrize("numpy_", ["2.0.2", "1.26.4"])  # Slicer 5.10+, Slicer 5.6/5.8
def test_intel_mac_is_refused_before_anything_is_installed(fake_slicer, monkeypatch, numpy_):
    torch_calls = []
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(
        PyTorchUtilsLogic=lambda: types.SimpleNamespace(installTorch=lambda **k: torch_calls.append(k))))
    intel_mac = lambda: ("Darwin", "x86_64")  # noqa: E731
    logic = InstallLogic(find_spec=lambda name: None, version_of={"numpy": numpy_}.get, platform_of=intel_mac)
    plan = logic.plan()
    assert not plan.empty and not plan.torch and "Intel Mac" in plan.blocker
    for call in (logic.require, logic.ensure):
        with pytest.raises(InstallError) as info:
            call()
        message = str(info.value)
        assert "Intel Mac" in message and "torch>=2.6" in message and "2.2.2" in message
        assert ("numpy 2.0.2" in message) == numpy_.startswith("2")  # the second reason, where it holds
        assert "Apple Silicon" in message and "Windows" in message  # what works instead
    assert fake_slicer.confirm == [] and fake_slicer.pip == [] and torch_calls == []

    # torch 2.2.2 already there (an upgrade cannot help) is refused the same way
    installed = {"torch": "2.2.2", "numpy": "2.4.6"}
    assert "Intel Mac" in plan_install(lambda name: object(), installed.get, intel_mac).blocker


@pytest.mark.parametrize("platform_, numpy_", [(("Darwin", "arm64"), "2.4.6"), (("Darwin", "arm64"), "1.26.4"),
                                              (("Linux", "x86_64"), "2.4.6"),
                                              (("Windows", "AMD64"), "2.0.2")])
def test_platforms_with_a_working_torch_get_it(platform_, numpy_):
    plan = plan_install(lambda name: None, {"numpy": numpy_}.get, lambda: platform_)
    assert plan.torch and not plan.blocker


# -- Slicer 5.12+: slicer.packaging installs, with its own dialogs -----------------------------------
@pytest.fixture
def slicer_5_12(fake_slicer, monkeypatch):
    """fake_slicer plus the slicer.packaging stand-in (v5.12.3's behaviour) and a PyTorchUtils
    that, as the real one, needs light-the-torch (else it pip-installs it itself)."""
    state = types.SimpleNamespace(installed={"numpy": "2.4.6"}, pip_fails=False, torch_saw_ltt=None)

    def pip(args):
        if state.pip_fails:
            return 1, ["Collecting safetensors>=0.4", "ERROR: No matching distribution found for safetensors>=0.4"]
        requirements = args[1:args.index("-c")] if "-c" in args else args[1:]
        state.constraints = Path(args[args.index("-c") + 1]).read_text(encoding="utf-8") if "-c" in args else None
        for requirement in requirements:
            state.installed[re.split(r"[<>=]", requirement)[0]] = "9.9"
        return 0, ["Successfully installed"]

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                         torchvisionVersionRequirement=None):
            state.torch_saw_ltt = "light-the-torch" in state.installed
            state.installed["torch"] = "2.13.0"
            return object()

    packaging = slicer_stubs.Packaging(pip, state.installed)
    sys.modules["slicer"].packaging = packaging
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    modules = {"torch": "torch", "nrrd": "pynrrd", "safetensors": "safetensors"}
    state.logic = InstallLogic(find_spec=lambda name: object() if modules.get(name) in state.installed else None,
                               version_of=state.installed.get)
    state.packaging = packaging
    return state


def test_slicer_5_12_installs_through_slicer_packaging_with_one_set_of_dialogs(fake_slicer, slicer_5_12):
    assert slicer_5_12.logic.ensure() is True
    assert len(fake_slicer.confirm) == 1 and "torch>=" in fake_slicer.confirm[0]  # our one question, torch included
    assert slicer_5_12.packaging.prompts == []  # pip_ensure does not ask again
    assert slicer_5_12.packaging.progress_dialogs == ["MedNeXtV2"]  # Slicer's progress dialog for pip ...
    assert not any("Installing pynrrd" in m or "safetensors" in m for m in _Dialog.opened)  # ... and none of ours
    assert fake_slicer.pip == [], "slicer.util.pip_install (our own dialog path) is not used on 5.12+"
    assert f"numpy=={importlib.metadata.version('numpy')}" in slicer_5_12.constraints  # Slicer's packages pinned
    assert slicer_5_12.torch_saw_ltt, "light-the-torch comes first, so PyTorchUtils opens no second pip dialog"
    assert slicer_5_12.logic.plan().empty


def test_slicer_5_12_pip_failure_shows_slicers_error_dialog_only(fake_slicer, slicer_5_12):
    slicer_5_12.pip_fails = True
    assert slicer_5_12.logic.ensure() is False  # no InstallError: the panel would show a second error dialog
    assert "No matching distribution" in slicer_5_12.packaging.error_dialogs[0]  # Slicer's dialog has pip's log
    assert fake_slicer.errors == ["Package installation failed."]  # one error dialog in all: Slicer's
    assert slicer_5_12.torch_saw_ltt is None  # torch is not tried after pip failed


def test_before_5_12_pip_runs_inside_the_modules_own_dialog(fake_slicer):
    installed = {"torch", "nrrd"}
    logic = InstallLogic(find_spec=lambda name: object() if name in installed else None)
    with pytest.raises(InstallError):
        logic.ensure()
    assert len(fake_slicer.pip) == 1 and any("safetensors" in m for m in _Dialog.opened)


def test_testing_mode_installs_nothing_on_any_slicer(fake_slicer, slicer_5_12):
    fake_slicer.testing = True
    with pytest.raises(InstallError, match="testing mode") as info:
        slicer_5_12.logic.ensure(askConfirmation=False)
    assert "torch>=" in str(info.value) and "safetensors" in str(info.value)  # says what is missing
    assert fake_slicer.confirm == [] and fake_slicer.pip == [] and slicer_5_12.packaging.progress_dialogs == []
    assert slicer_5_12.torch_saw_ltt is None
    # the stand-in itself follows v5.12.3: pip_ensure skips in testing mode unless told otherwise
    assert slicer_5_12.packaging.pip_ensure(["safetensors>=0.4"]) is None and "safetensors" not in slicer_5_12.installed
    slicer_5_12.packaging.pip_ensure(["safetensors>=0.4"], skip_in_testing=False, prompt_install=False)
    assert "safetensors" in slicer_5_12.installed
