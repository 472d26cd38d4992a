"""The Train module checks and writes scene cases one case per timer tick, on real MRML (slicer-core).

MRML work stays on the main thread, so the wizard cannot move it to a worker; instead the logic
offers it as steps (MedNeXtV2TrainLib/case_steps.py) and the panel's timer runs one per tick.
Between two ticks Slicer processes its events: no stall is longer than one case. The timer is a
stand-in (a Qt object); the cases, the logic and the files it writes are real."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from test_slicer_train_mrml import scene_cases


class Timer:
    """qt.QTimer's part that SteppedWork uses; `tick()` is one timeout()."""

    def __init__(self):
        self.slot, self.active, self.interval = None, False, None

    def setInterval(self, ms):
        self.interval = ms

    def connect(self, signal, slot):
        assert signal == "timeout()"
        self.slot = slot

    def start(self):
        self.active = True

    def stop(self):
        self.active = False

    def tick(self):
        assert self.active, "a stopped timer does not fire"
        started = time.perf_counter()
        self.slot()
        return time.perf_counter() - started


def written_images(jobsRoot: Path):
    return sorted(p.name for p in jobsRoot.rglob("imagesTr/*") if p.is_file())


def labels_for(cases):
    from MedNeXtV2TrainLib.label_table import dataset_labels, default_choices
    from MedNeXtV2TrainLib.logic import MedNeXtV2TrainLogic

    _, union, _ = MedNeXtV2TrainLogic.checkCases(cases)
    return dataset_labels(union, default_choices(union, []), [])


def test_writing_handles_one_case_per_tick_and_reports_each(slicer, data_dir, tmp_path):
    from MedNeXtV2TrainLib.case_steps import SteppedWork
    from MedNeXtV2TrainLib.logic import MedNeXtV2TrainLogic
    from MedNeXtV2TrainLib.settings import TrainSettings

    cases = scene_cases(slicer, data_dir, tmp_path)
    labels, jobsRoot = labels_for(cases), tmp_path / "jobs"
    shown, done, timer = [], [], Timer()
    steps = MedNeXtV2TrainLogic.createJobSteps(TrainSettings(model_name="Steps", modality="MR"), jobsRoot, cases, labels)
    work = SteppedWork(steps, timer, lambda step: shown.append(step.text("Writing")), done.append,
                       lambda e: pytest.fail(f"writing failed: {e}")).start()
    assert timer.interval == 0 and timer.active and written_images(jobsRoot) == []  # nothing before the first tick
    counts, stalls = [], []
    while work.running:
        stalls.append(timer.tick())
        counts.append(len(written_images(jobsRoot)))
    assert shown == ["Writing case 1/3: Breast", "Writing case 2/3: Brain", "Writing case 3/3: Breast again"]
    # tick 1 makes the job folder; each later tick writes exactly one case
    assert counts == [0, 1, 2, 3] and not timer.active
    jobDir, state = done[0]
    assert Path(state.dataset) == jobDir / "dataset" and (jobDir / "dataset" / "dataset.json").is_file()
    print("GUI-thread time per tick (s):", [round(s, 3) for s in stalls])


def test_cancel_stops_writing_and_keeps_no_job(slicer, data_dir, tmp_path):
    from MedNeXtV2TrainLib.case_steps import SteppedWork
    from MedNeXtV2TrainLib.logic import MedNeXtV2TrainLogic
    from MedNeXtV2TrainLib.settings import TrainSettings

    cases = scene_cases(slicer, data_dir, tmp_path)
    labels, jobsRoot = labels_for(cases), tmp_path / "jobs"
    outcome, timer = [], Timer()
    steps = MedNeXtV2TrainLogic.createJobSteps(TrainSettings(model_name="Steps", modality="MR"), jobsRoot, cases, labels)
    work = SteppedWork(steps, timer, lambda step: None, outcome.append, outcome.append).start()
    timer.tick()
    timer.tick()
    assert len(written_images(jobsRoot)) == 1
    work.cancel()
    assert not work.running and not timer.active
    assert list(jobsRoot.iterdir()) == [], "a cancelled export leaves no job folder and no partial dataset"
    work.onTick()  # a timeout already queued when Cancel was pressed does nothing
    assert outcome == []


def test_checking_handles_one_case_per_tick(slicer, data_dir, tmp_path):
    from MedNeXtV2TrainLib.case_steps import SteppedWork
    from MedNeXtV2TrainLib.logic import MedNeXtV2TrainLogic

    cases = scene_cases(slicer, data_dir, tmp_path)
    checked, shown, done, timer = [], [], [], Timer()
    import MedNeXtV2TrainLib.scene_cases as scene_module

    real_case_facts = scene_module.case_facts
    scene_module.case_facts = lambda case: (checked.append(case.name), real_case_facts(case))[1]
    try:
        work = SteppedWork(MedNeXtV2TrainLogic.checkCaseSteps(cases), timer,
                           lambda step: shown.append(step.text("Checking")), done.append, pytest.fail).start()
        per_tick = []
        while work.running:
            before = len(checked)
            timer.tick()
            per_tick.append(len(checked) - before)
    finally:
        scene_module.case_facts = real_case_facts
    assert per_tick == [0, 1, 1, 1] and shown[0] == "Checking case 1/3: Breast"
    problems, union, _ = done[0]
    assert [s.name for s in union] == ["lesion", "tissue"]
    assert (problems, union) == MedNeXtV2TrainLogic.checkCases(cases)[:2], "the same answer as the blocking check"


@pytest.fixture
def panel_modules_on_a_qt_mock(monkeypatch):
    """The wizard's files imported on a `qt` mock for one test, and forgotten after it."""
    import sys
    from unittest import mock

    before = set(sys.modules)
    qt = mock.MagicMock()
    monkeypatch.setitem(sys.modules, "qt", qt)
    for name in [n for n in sys.modules if n.startswith("MedNeXtV2TrainLib.") and n.endswith(("widget", "_page", "run_pages"))]:
        monkeypatch.delitem(sys.modules, name)
    yield qt
    for name in set(sys.modules) - before:
        if name.startswith("MedNeXtV2"):
            del sys.modules[name]


def test_the_wizard_runs_check_and_write_from_its_timer_with_cancel(slicer, data_dir, tmp_path, monkeypatch,
                                                                   panel_modules_on_a_qt_mock):
    """The wizard's own wiring: Next on the Cases page checks from a timer and moves on when the
    cases pass; its button is Cancel meanwhile; Start writes from a timer, Cancel removes the job.
    Qt is a stand-in (`qt` a mock whose QTimer is the Timer above, the .ui's widgets mocks); the
    scene, the logic and the files are real."""
    import importlib
    import sys
    from unittest import mock

    timers = []
    panel_modules_on_a_qt_mock.QTimer = lambda: timers.append(Timer()) or timers[-1]
    from MedNeXtV2SegmentLib.engine_client import EngineClient
    # the wizard's module as sys.modules has it: the package's `widget` attribute may still be an
    # import another test has forgotten
    widget = importlib.import_module("MedNeXtV2TrainLib.widget")
    from MedNeXtV2TrainLib.label_table import dataset_labels, default_choices
    from MedNeXtV2TrainLib.logic import MedNeXtV2TrainLogic
    from MedNeXtV2TrainLib.settings import TrainSettings
    from MedNeXtV2TrainLib.widget import LABELS, TrainWizard

    cases = scene_cases(slicer, data_dir, tmp_path)
    ui = mock.MagicMock()
    ui.wizardStack.currentIndex, ui.resumeComboBox.count, ui.sourceFolderRadio.checked = 0, 0, False
    ui.wizardStack.setCurrentIndex.side_effect = lambda i: setattr(ui.wizardStack, "currentIndex", i)
    # the page classes as the wizard's module has them (the package may still hold an older import)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda uiWidget: ui, raising=False)
    monkeypatch.setattr(widget.SettingsPage, "setSettings", lambda self, settings: None)
    monkeypatch.setattr(widget.SettingsPage, "fillModels", lambda self, models, wanted="": None)
    monkeypatch.setattr(widget.CasesPage, "fillCasesFromScene", lambda self: None)
    monkeypatch.setattr(widget.CasesPage, "sceneCases", lambda self: cases)  # the table's ticked rows
    filled = []
    monkeypatch.setattr(widget.LabelsPage, "fillLabels", lambda self: filled.append(True))
    wizard = TrainWizard(object(), MedNeXtV2TrainLogic(EngineClient(python=sys.executable)))
    ui.jobsFolderEdit.text = str(tmp_path / "jobs")

    def tick_until_done():
        statuses = []
        while wizard.caseWork is not None:
            wizard.caseWork.timer.tick()
            statuses.append(ui.statusLabel.text)
        return statuses

    wizard.onNext()
    assert wizard.busy and ui.checkCasesButton.text == "Cancel check" and ui.nextButton.enabled is False
    assert tick_until_done()[:3] == ["Checking case 1/3: Breast...", "Checking case 2/3: Brain...",
                                     "Checking case 3/3: Breast again..."]
    assert ui.wizardStack.currentIndex == LABELS and filled and ui.checkCasesButton.text == "Check cases"

    ui.wizardStack.currentIndex = 0
    wizard.onNext()
    wizard.caseWork.timer.tick()
    wizard.casesPage.checkCases()  # the button, now "Cancel check"
    assert wizard.caseWork is None and ui.wizardStack.currentIndex == 0 and ui.statusLabel.text.startswith("Cancelled")

    wizard.labels = dataset_labels(wizard.union, default_choices(wizard.union, []), [])
    monkeypatch.setattr(wizard.settingsPage, "checkSettings", lambda: True)
    monkeypatch.setattr(wizard.settingsPage, "settings", lambda: TrainSettings(model_name="Steps", modality="MR"))
    monkeypatch.setattr(wizard.labelsPage, "checkLabels", lambda: True)
    monkeypatch.setattr(wizard, "ensureInstalled", lambda: True)
    started = []
    monkeypatch.setattr(wizard, "startJob", lambda jobDir, state: started.append(jobDir))
    wizard.onStart()
    assert (ui.startButton.enabled, ui.cancelButton.enabled) == (False, True)
    assert tick_until_done() == ["Writing case 1/3: Breast...", "Writing case 2/3: Brain...",
                                 "Writing case 3/3: Breast again...", "Writing case 3/3: Breast again..."]
    assert started == [tmp_path / "jobs" / "steps"] and (started[0] / "dataset" / "dataset.json").is_file()
    assert (ui.startButton.enabled, ui.cancelButton.enabled) == (True, False)

    wizard.onStart()
    wizard.caseWork.timer.tick()
    wizard.caseWork.timer.tick()
    assert len(written_images(tmp_path / "jobs" / "steps-2")) == 1
    wizard.cancelCaseWork()  # the Train page's Cancel button
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == ["steps"], "the cancelled job is gone"
    assert started == [tmp_path / "jobs" / "steps"] and ui.statusLabel.text.startswith("Cancelled")
