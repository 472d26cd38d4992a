"""The Train wizard: binds Resources/UI/MedNeXtV2Train.ui to the logic, and talks to people.

Five pages in a stacked widget (Cases, Labels, Base model & settings, Train, Finish); Next
checks the current page first and says what to fix. This file holds the navigation, the shared
state and the engine-facing steps (install, model list); one class per page lives in
cases_page.py, labels_page.py, settings_page.py and run_pages.py (the last two pages).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, List, Optional

import qt
import slicer

from MedNeXtV2SegmentLib.install import InstallError
from MedNeXtV2TrainLib.case_steps import SteppedWork
from MedNeXtV2TrainLib.cases_page import CasesPage
from MedNeXtV2TrainLib.labels_page import LabelsPage
from MedNeXtV2TrainLib.logic import MedNeXtV2TrainLogic, default_jobs_root
from MedNeXtV2TrainLib.run_pages import RunPages
from MedNeXtV2TrainLib.scene_cases import SceneCase
from MedNeXtV2TrainLib.settings import TrainSettings
from MedNeXtV2TrainLib.settings_page import SettingsPage
from MedNeXtV2TrainLib.train_command import SettingsError

logger = logging.getLogger(__name__)
PAGES = ("Cases", "Labels", "Base model & settings", "Train", "Finish")
CASES, LABELS, SETTINGS, TRAIN, FINISH = range(5)


class TrainWizard:
    def __init__(self, uiWidget, logic: Optional[MedNeXtV2TrainLogic] = None) -> None:
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        self.logic = logic or MedNeXtV2TrainLogic()
        self.models = []
        self.cases: List[SceneCase] = []
        self.union = []
        self.segmentsByCase = {}
        self.labels = []
        self.folderDataset = None
        self.wantedBaseModel = ""
        self.caseWork: Optional[SteppedWork] = None  # cases being checked or written, one per timer tick
        self.caseWorkEnd: Optional[Callable[[], None]] = None
        self.logic.engine.modelList.addListener(self.onModelList)
        self.casesPage = CasesPage(self)
        self.labelsPage = LabelsPage(self)
        self.settingsPage = SettingsPage(self)
        self.runPages = RunPages(self.ui, self.logic, self.say, self.onRunChanged)
        self.ui.cancelButton.connect("clicked(bool)", self.cancelCaseWork)  # also stops writing cases
        self.ui.backButton.connect("clicked(bool)", lambda: self.goTo(self.ui.wizardStack.currentIndex - 1))
        self.ui.nextButton.connect("clicked(bool)", self.onNext)
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.jobsFolderEdit.text = str(default_jobs_root())
        saved = self.logic.loadSettings()
        self.settingsPage.setSettings(saved)
        self.refreshModels(wanted=saved.base_model or "")
        self.casesPage.fillCasesFromScene()
        self.refreshResumable()
        self.goTo(CASES)

    def cleanup(self) -> None:
        self.cancelCaseWork()
        self.logic.engine.modelList.removeListener(self.onModelList)
        self.runPages.cleanup()

    # -- navigation ----------------------------------------------------------------------------
    def goTo(self, index: int) -> None:
        index = max(CASES, min(FINISH, index))
        self.ui.wizardStack.setCurrentIndex(index)
        self.ui.stepLabel.text = f"Step {index + 1} of {len(PAGES)}: {PAGES[index]}"
        self.ui.backButton.enabled = index > CASES and not self.busy
        self.ui.nextButton.enabled = index < FINISH and not self.busy
        self.ui.nextButton.text = "Next >" if index < TRAIN else "Finish >"

    @property
    def busy(self) -> bool:
        return self.runPages.busy or self.caseWork is not None

    def fromFolder(self) -> bool:
        return self.casesPage.fromFolder()

    def fillCasesFromScene(self) -> None:
        self.casesPage.fillCasesFromScene()

    def onNext(self) -> None:
        page = self.ui.wizardStack.currentIndex
        if page == CASES:  # checked one case per timer tick: the page moves on when they pass
            self.casesPage.checkCases(onReady=lambda: (self.labelsPage.fillLabels(), self.goTo(CASES + 1)))
            return
        checks = {LABELS: self.labelsPage.checkLabels,
                  SETTINGS: self.settingsPage.checkSettings,
                  TRAIN: lambda: self.runPages.trained is not None or self.say("Train a model first (or resume one).")}
        if checks.get(page, lambda: True)():
            self.goTo(page + 1)

    def say(self, text: str, error: bool = True) -> bool:
        """Show a status line; returns False so a failed page check can `return self.say(...)`."""
        self.ui.statusLabel.text = text
        if error:
            logger.warning(text)
        return False

    # -- cases checked or written without freezing Slicer ---------------------------------------
    def runCaseSteps(self, steps, verb: str, onDone: Callable[[object], None],
                     onEnd: Optional[Callable[[], None]] = None) -> None:
        """Run a logic generator (case_steps.py) one case per timer tick on the main thread, where
        MRML work belongs: Slicer processes events between cases, the status line says
        '<verb> case i/n: name', and Cancel (cancelCaseWork) stops it, its files removed."""
        self.caseWorkEnd = onEnd

        def done(result) -> None:
            self.endCaseWork()
            onDone(result)

        def failed(error: Exception) -> None:
            self.endCaseWork()
            self.say(f"{verb} the cases failed: {error}")
            if not isinstance(error, (OSError, RuntimeError, ValueError)):  # not a case's own problem
                slicer.util.errorDisplay(f"{verb} the cases failed: {error}")

        self.caseWork = SteppedWork(steps, qt.QTimer(), lambda step: self.say(step.text(verb) + "...", error=False),
                                    done, failed).start()
        self.goTo(self.ui.wizardStack.currentIndex)  # Back and Next wait meanwhile

    def cancelCaseWork(self) -> None:
        if self.caseWork is None:
            return
        self.caseWork.cancel()  # the generator's cleanup has run when this returns
        self.endCaseWork()
        self.say("Cancelled: no case was kept.", error=False)

    def endCaseWork(self) -> None:
        self.caseWork, end, self.caseWorkEnd = None, self.caseWorkEnd, None
        if end is not None:
            end()
        self.goTo(self.ui.wizardStack.currentIndex)

    # -- the engine: one install step, the shared model list -----------------------------------
    def ensureInstalled(self) -> bool:
        """The Segment module's install step, before the first engine run of this module too."""
        try:
            return self.logic.engine.installLogic.ensure(askConfirmation=True)
        except InstallError as e:
            slicer.util.errorDisplay(str(e), detailedText=e.details)
            return False

    def refreshModels(self, force: bool = False, wanted: str = "") -> None:
        """Base models from the list both modules share (the engine client reads it in the
        background; `onModelList` fills the selector when it arrives)."""
        engine = self.logic.engine
        self.wantedBaseModel = wanted or self.wantedBaseModel
        self.settingsPage.fillModels(engine.modelList.models, self.wantedBaseModel)  # "Train from scratch" works meanwhile
        if any(model.id == self.wantedBaseModel for model in engine.modelList.models):
            self.wantedBaseModel = ""  # selected: a later list must not take the user's choice back
        if not engine.installLogic.plan().empty:
            return
        try:
            engine.modelList.load(force)
        except RuntimeError as e:  # the engine's Python cannot start
            self.onModelList(e)

    def onModelList(self, error) -> None:
        if error is not None:
            self.ui.baseModelInfoLabel.text = f"Model list unavailable ({error}); you can still train from scratch."
            return
        self.settingsPage.fillModels(self.logic.engine.modelList.models, self.wantedBaseModel)
        self.wantedBaseModel = ""

    def improveModel(self, volumeNode, segmentationNode, baseModelId: str) -> None:
        """Fine-tune `baseModelId` on this volume and segmentation (a result the user corrected):
        the case is ticked in the table (CasesPage.useCase), the model becomes the base, and the
        wizard opens at its first page. Cases of other volumes keep their ticks."""
        if self.busy:
            self.say("A training run is in progress: let it finish or cancel it first.")
            return
        if self.fromFolder():
            self.ui.sourceSceneRadio.checked = True  # the table is refilled from the scene
        caseName = self.casesPage.useCase(volumeNode, segmentationNode)
        base = self.logic.engine.modelList.model(baseModelId)  # None while the model list is being read
        title = base.title if base is not None else baseModelId
        if self.ui.modelNameEdit.text.strip() in ("", TrainSettings().model_name):
            self.ui.modelNameEdit.text = f"{title} improved"
        self.refreshModels(wanted=baseModelId)  # selected now, or once the list being read arrives
        self.goTo(CASES)
        self.say(f"Case '{caseName}' is ticked and '{title}' is the base model. "
                 "One case is enough; press Next to check it.", error=False)

    # -- page 4: train -------------------------------------------------------------------------
    def refreshResumable(self) -> None:
        self.runPages.refreshResumable(Path(self.ui.jobsFolderEdit.text))

    def onStart(self) -> None:
        if not (self.settingsPage.checkSettings() and (self.casesPage.fromFolder() or self.labelsPage.checkLabels())):
            return
        if not self.ensureInstalled():
            return
        if self.caseWork is not None:
            return
        settings = self.settingsPage.settings()
        self.logic.saveSettings(settings)
        folder = Path(self.ui.folderPathEdit.text) if self.casesPage.fromFolder() else None
        steps = self.logic.createJobSteps(settings, Path(self.ui.jobsFolderEdit.text), self.cases, self.labels,
                                          datasetDir=folder)
        self.ui.startButton.enabled, self.ui.cancelButton.enabled = False, True

        def restoreButtons() -> None:
            self.ui.startButton.enabled, self.ui.cancelButton.enabled = True, False

        self.runCaseSteps(steps, "Writing", lambda job: self.startJob(*job), onEnd=restoreButtons)

    def startJob(self, jobDir: Path, state) -> None:
        try:
            self.runPages.begin(self.logic.startTraining(jobDir, state), colors={l.name: l.color for l in self.labels})
        except (SettingsError, OSError, RuntimeError, ValueError) as e:
            self.say(f"Training could not start: {e}")

    def onRunChanged(self) -> None:
        """A run started or ended: show its page (or the model's), and lock navigation while it runs."""
        if self.runPages.trained is not None:
            self.goTo(FINISH)
        else:
            self.goTo(TRAIN)
        self.refreshResumable()
