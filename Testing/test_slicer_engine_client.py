"""The engine client both modules share (MedNeXtV2SegmentLib/engine_client.py), with the real engine:
the shipped engine wins in the child even behind a launcher that puts another `mednextv2` first,
and a model registered by the Train module reaches the Segment list without a Refresh.

Slicer is the real core plus slicer_stubs.py's app layer; `qt` is a mock, only for the imports
of the panel files (the Finish page's object is built on it; its labels are mock attributes)."""
from __future__ import annotations

import os
import stat
import sys
import time
import types
from pathlib import Path
from unittest import mock

import pytest

import slicer_stubs
from MedNeXtV2SegmentLib.command import engine_package_dir
from MedNeXtV2SegmentLib.engine_client import EngineClient
from MedNeXtV2SegmentLib.models import read_model_list
from MedNeXtV2SegmentLib.tinybundle import make_tiny_bundle

DECOY = "import sys\nprint('decoy mednextv2 from site-packages', file=sys.stderr)\nsys.exit(42)\n"


def fake_python_slicer(tmp_path: Path) -> Path:
    """A launcher as Slicer's PythonSlicer is (a CTK app launcher): it prepends Slicer's Python paths,
    site-packages among them, to the inherited PYTHONPATH and runs the real interpreter with the
    same arguments and working directory. Its site-packages holds a pip-installed `mednextv2`."""
    site = tmp_path / "Slicer" / "lib" / "Python" / "lib" / "python3" / "site-packages"
    (site / "mednextv2").mkdir(parents=True)
    (site / "mednextv2" / "__init__.py").write_text(DECOY)
    (site / "mednextv2" / "__main__.py").write_text(DECOY)
    launcher = tmp_path / "Slicer" / "bin" / "PythonSlicer"
    launcher.parent.mkdir(parents=True)
    launcher.write_text(f'#!/bin/sh\nPYTHONPATH="{site}${{PYTHONPATH:+:$PYTHONPATH}}"\nexport PYTHONPATH\n'
                        f'exec "{sys.executable}" "$@"\n')
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    return launcher


def test_the_shipped_engine_wins_behind_a_launcher_that_prepends_site_packages(tmp_path):
    launcher = fake_python_slicer(tmp_path)
    engine = EngineClient(python=str(launcher),
                          baseEnv={"PATH": os.environ.get("PATH", ""), "PYTHONSAFEPATH": "1",
                                   "MEDNEXTV2_HOME": str(tmp_path / "home")})
    where = engine.start([str(launcher), "-c", "import sys; print(sys.path[1])"])  # what the launcher put first
    assert where.wait(timeout=60) == 0
    assert "site-packages" in [line.text for line in where.poll()][0], "the launcher stand-in must prepend"
    process = engine.start(engine.command("models", "--progress", "json", "list", "--json"))
    assert process.wait(timeout=120) == 0, "\n".join(process.stderr_tail)
    lines = process.poll()
    assert "decoy" not in "\n".join(process.stderr_tail)
    listed = read_model_list(0, "\n".join(line.text for line in lines if line.stream == "stdout"), "")
    assert isinstance(listed, list), "the shipped engine's model list"
    origin = engine.start([str(launcher), "-c", "import mednextv2; print(mednextv2.__file__)"])
    assert origin.wait(timeout=60) == 0
    printed = Path([line.text for line in origin.poll() if line.stream == "stdout"][0])
    assert printed.parent.parent == engine_package_dir()


@pytest.fixture()
def slicer_facing(tmp_path, monkeypatch):
    before = set(sys.modules)
    monkeypatch.setenv("MEDNEXTV2_HOME", str(tmp_path / "home"))  # the engine child inherits it
    monkeypatch.delenv("MEDNEXTV2_CATALOGS", raising=False)
    slicer = slicer_stubs.install(str(tmp_path / "slicer-temp"))
    monkeypatch.setitem(sys.modules, "qt", mock.MagicMock())
    try:
        yield slicer
    finally:
        slicer_stubs.uninstall()
        for name in set(sys.modules) - before:  # nothing built on the qt mock outlives the test
            if name.startswith("MedNeXtV2"):  # (torch, imported here for the first time, cannot be re-imported)
                del sys.modules[name]


def test_a_model_registered_by_train_appears_in_the_segment_list_without_refresh(slicer_facing, tmp_path):
    from MedNeXtV2SegmentLib.logic import MedNeXtV2SegmentLogic
    from MedNeXtV2TrainLib.logic import MedNeXtV2TrainLogic
    from MedNeXtV2TrainLib.resume_state import TrainState, load_state, save_state
    from MedNeXtV2TrainLib.run_pages import RunPages
    from MedNeXtV2TrainLib.settings import TrainSettings
    from MedNeXtV2TrainLib.trained_model import read_trained_model

    engine = EngineClient(python=sys.executable)
    segment, train = MedNeXtV2SegmentLogic(engine), MedNeXtV2TrainLogic(engine)
    assert train.engine is segment.engine is engine
    segment.refreshModels()
    assert "selftest-tiny" not in [m.id for m in engine.modelList.models]
    heard = []
    engine.modelList.addListener(heard.append)  # what the Segment panel listens with (onModelList)

    job = tmp_path / "jobs" / "tiny"
    save_state(job, TrainState(dataset=str(tmp_path / "dataset"), output_bundle=str(job / "tiny"),
                               settings=TrainSettings(model_name="Tiny")))
    pages = RunPages(mock.MagicMock(), train, lambda *a, **k: False, lambda: None)
    pages.run = types.SimpleNamespace(job_dir=job)
    pages.trained = read_trained_model(make_tiny_bundle(tmp_path / "trained"))
    pages.onRegister()  # the Finish page registers the new model
    deadline = time.monotonic() + 180
    while pages.registration is not None:  # the page's registration timer
        assert time.monotonic() < deadline, "registration did not finish"
        pages.onRegistrationTimer()
        time.sleep(0.05)
    assert pages.ui.registerStatusLabel.text == "Registered as 'selftest-tiny'."
    assert load_state(job).registered_model_id == "selftest-tiny"
    while not engine.modelList.poll():  # the engine client's own timer; nobody pressed Refresh
        assert time.monotonic() < deadline, "the list was not read again"
        time.sleep(0.05)
    assert heard == [None]
    assert "selftest-tiny" in [m.id for m in engine.modelList.models] and engine.modelList.model("selftest-tiny").downloaded

    # "Segment with this model": the Segment panel's public selectModel, nothing else of it.
    panel = mock.Mock(spec=["selectModel"])
    slicer_facing.util.selectModule = mock.Mock()
    slicer_facing.util.getModuleWidget = mock.Mock(return_value=types.SimpleNamespace(panel=panel))
    try:
        pages.onSegmentWithModel()
    finally:
        del slicer_facing.util.selectModule, slicer_facing.util.getModuleWidget
    panel.selectModel.assert_called_once_with("selftest-tiny")


class ModelSelector:
    """The model combo box's stand-in (a Qt widget): items with data, the current index."""

    def __init__(self, ids=()):
        self.items = list(ids)
        self.currentIndex = 0 if self.items else -1

    def findData(self, data):
        return self.items.index(data) if data in self.items else -1

    def setCurrentIndex(self, index):
        self.currentIndex = index

    @property
    def currentData(self):
        return self.items[self.currentIndex] if 0 <= self.currentIndex < len(self.items) else None


def test_select_model_selects_now_or_when_the_list_arrives(slicer_facing):
    from MedNeXtV2SegmentLib.widget import SegmentPanel

    panel = types.SimpleNamespace(wantedModel="", ui=types.SimpleNamespace(modelSelector=ModelSelector(["a", "b"])))
    SegmentPanel.selectModel(panel, "b")
    assert panel.ui.modelSelector.currentData == "b" and panel.wantedModel == ""
    SegmentPanel.selectModel(panel, "new-model")  # not listed yet: fillModels selects it when the list has it
    assert panel.ui.modelSelector.currentData == "b" and panel.wantedModel == "new-model"
