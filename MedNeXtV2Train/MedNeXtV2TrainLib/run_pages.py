"""The wizard's last two pages: a training run with live progress and curves, then the new model.

The engine runs as a child process; a 500 ms timer drains its output, so Slicer stays usable.
Registration (`mednextv2 models import`) runs the same way, through the engine client both modules
share; once it has finished, the client reads the model list again, so the Segment panel lists the
new model without a Refresh.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import qt
import slicer

from MedNeXtV2TrainLib.curve_painter import render_curves
from MedNeXtV2TrainLib.train_progress import format_eta
from MedNeXtV2TrainLib.trained_model import TrainedModel, read_trained_model

logger = logging.getLogger(__name__)


class RunPages:
    def __init__(self, ui, logic, say: Callable[..., bool], onRunChanged: Callable[[], None]) -> None:
        self.ui, self.logic, self.say, self.onRunChanged = ui, logic, say, onRunChanged
        self.run = None
        self.trained: Optional[TrainedModel] = None
        self.colors: Dict[str, Tuple[int, int, int]] = {}
        self.registration = None
        self.timer = qt.QTimer()
        self.timer.setInterval(500)
        self.timer.connect("timeout()", self.onTimer)
        self.registrationTimer = qt.QTimer()
        self.registrationTimer.setInterval(200)
        self.registrationTimer.connect("timeout()", self.onRegistrationTimer)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.resumeButton.connect("clicked(bool)", self.onResume)
        self.ui.registerButton.connect("clicked(bool)", self.onRegister)
        self.ui.segmentWithModelButton.connect("clicked(bool)", self.onSegmentWithModel)
        self.ui.openModelFolderButton.connect("clicked(bool)", self.onOpenModelFolder)
        self.ui.cancelButton.enabled = False

    @property
    def busy(self) -> bool:
        return self.run is not None and self.run.running

    def cleanup(self) -> None:
        self.timer.stop()
        self.registrationTimer.stop()
        if self.busy:
            self.run.cancel()  # the engine saves a checkpoint; Resume picks it up next time

    # -- train page -----------------------------------------------------------------------------
    def refreshResumable(self, jobsRoot: Path) -> None:
        self.ui.resumeComboBox.clear()
        for jobDir, state in self.logic.resumableJobs(jobsRoot):
            done = "" if state.epochs_done is None else f", {state.epochs_done} epoch(s) done"
            self.ui.resumeComboBox.addItem(f"{state.settings.model_name} ({state.status}{done}, {state.updated[:16]})", str(jobDir))
        self.ui.resumeButton.enabled = self.ui.resumeComboBox.count > 0 and not self.busy

    def onResume(self) -> None:
        jobDir = self.ui.resumeComboBox.currentData
        if jobDir:
            try:
                self.begin(self.logic.startTraining(Path(jobDir), resume=True))
            except (OSError, RuntimeError, ValueError) as e:
                self.say(f"Training could not resume: {e}")

    def begin(self, run, colors: Optional[Dict[str, Tuple[int, int, int]]] = None) -> None:
        self.run, self.trained, self.colors = run, None, dict(colors or {})
        self.ui.logText.clear()
        self.ui.trainProgressBar.value = 0
        self.ui.startButton.enabled = self.ui.resumeButton.enabled = False
        self.ui.cancelButton.enabled = True
        self.say(f"Training in {run.job_dir}", error=False)
        self.drawCurves()
        self.onRunChanged()
        self.timer.start()

    def onCancel(self) -> None:
        if self.busy:
            self.run.cancel()
            self.ui.cancelButton.enabled = False
            self.say("Stopping: the engine saves a checkpoint first...", error=False)

    def onTimer(self) -> None:
        result = self.run.poll()
        for line in result.log:
            self.ui.logText.appendPlainText(line)
        if result.updates:
            last = result.updates[-1]
            self.ui.trainProgressBar.value = int(round(100 * last.fraction))
            self.ui.trainProgressBar.format = f"{last.stage} %p%"  # preprocess / train / validate / done
            self.ui.epochLabel.text = last.status_text()
            self.ui.etaLabel.text = "" if last.eta_s is None else format_eta(last.eta_s)
        if result.curves_changed:
            self.drawCurves()
        if result.finished:
            self.end()

    def drawCurves(self) -> None:
        curves = self.run.curves if self.run is not None else None
        loss = [curves.loss_series()] if curves else []
        dice = curves.dice_series() if curves else []
        for label, series, title, yRange in ((self.ui.lossPlotLabel, loss, "Training loss", None),
                                             (self.ui.dicePlotLabel, dice, "Validation Dice", (0.0, 1.0))):
            width, height = max(label.width, 320), max(label.height, 170)
            label.setPixmap(render_curves(qt, width, height, title, series, y_range=yRange, colors=self.colors))

    def end(self) -> None:
        self.timer.stop()
        self.ui.cancelButton.enabled = False
        self.ui.startButton.enabled = True
        self.say(self.run.outcome(), error=self.run.state.status != "finished")
        if self.run.state.status == "finished":
            try:
                self.trained = read_trained_model(Path(self.run.state.output_bundle))
            except Exception as e:  # a finished run without a valid bundle is an engine defect worth showing
                self.say(f"Training finished, but its model could not be read: {e}")
            else:
                self.showFinish()
        self.onRunChanged()

    # -- finish page ----------------------------------------------------------------------------
    def showFinish(self) -> None:
        self.ui.resultSummaryLabel.text = self.trained.summary()
        self.ui.metricsTable.setRowCount(0)
        for name, dice in self.trained.dice.items():
            row = self.ui.metricsTable.rowCount
            self.ui.metricsTable.insertRow(row)
            self.ui.metricsTable.setItem(row, 0, qt.QTableWidgetItem(name))
            self.ui.metricsTable.setItem(row, 1, qt.QTableWidgetItem(f"{dice:.3f}"))
        self.ui.registerStatusLabel.text = "Not registered yet."
        self.onRegister()  # a finished model belongs in the model list; the button retries after a failure

    def onRegister(self) -> None:
        if self.trained is None or self.registration is not None:
            return
        self.registration = self.logic.startRegistration(self.trained.path)
        self.ui.registerStatusLabel.text = "Registering..."
        self.registrationTimer.start()

    def onRegistrationTimer(self) -> None:
        if not self.logic.pollRegistration(self.registration):
            return
        self.registrationTimer.stop()
        registration, self.registration = self.registration, None
        try:
            self.logic.finishRegistration(registration)
        except RuntimeError as e:  # EngineError: the engine's exit code; its last words follow
            tail = "\n".join(list(registration.stderr_tail)[-5:])
            self.ui.registerStatusLabel.text = f"Registration failed: {e} {tail}".strip()
            return
        self.logic.markRegistered(self.run.job_dir, self.trained.id)
        self.ui.registerStatusLabel.text = f"Registered as '{self.trained.id}'."

    def onSegmentWithModel(self) -> None:
        if self.trained is None:
            return
        slicer.util.selectModule("MedNeXtV2Segment")
        slicer.util.getModuleWidget("MedNeXtV2Segment").panel.selectModel(self.trained.id)

    def onOpenModelFolder(self) -> None:
        if self.trained is not None:
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(self.trained.path)))
