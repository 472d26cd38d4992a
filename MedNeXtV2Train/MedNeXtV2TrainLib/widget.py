"""The Train wizard: binds Resources/UI/MedNeXtV2Train.ui to the logic, and talks to people.

Five pages in a stacked widget (Cases, Labels, Base model & settings, Train, Finish); Next
checks the current page first and says what to fix. This file holds the navigation, the shared
state and the engine-facing steps (install, model list); one class per page lives in
cases_page.py, labels_page.py, settings_page.py and run_pages.py (the last two pages).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import qt
import slicer

from MedNeXtV2SegmentLib.install import InstallError
from MedNeXtV2SegmentLib.models import MODEL_LIST, CatalogError
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
        self.listRun = None
        self.wantedBaseModel = ""  # selected once a model list being read arrives
        self.listTimer = qt.QTimer()
        self.listTimer.setInterval(200)
        self.listTimer.connect("timeout()", self.onListTimer)
        self.casesPage = CasesPage(self)
        self.labelsPage = LabelsPage(self)
        self.settingsPage = SettingsPage(self)
        self.runPages = RunPages(self.ui, self.logic, self.say, self.onRunChanged)
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
        self.listTimer.stop()
        if self.listRun is not None:
            self.listRun.process.cancel(grace_s=0.0)
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
        return self.runPages.busy

    def fromFolder(self) -> bool:
        return self.casesPage.fromFolder()

    def fillCasesFromScene(self) -> None:
        self.casesPage.fillCasesFromScene()

    def onNext(self) -> None:
        page = self.ui.wizardStack.currentIndex
        checks = {CASES: self.casesPage.checkCases, LABELS: self.labelsPage.checkLabels,
                  SETTINGS: self.settingsPage.checkSettings,
                  TRAIN: lambda: self.runPages.trained is not None or self.say("Train a model first (or resume one).")}
        if checks.get(page, lambda: True)():
            if page == CASES:
                self.labelsPage.fillLabels()
            self.goTo(page + 1)

    def say(self, text: str, error: bool = True) -> bool:
        """Show a status line; returns False so a failed page check can `return self.say(...)`."""
        self.ui.statusLabel.text = text
        if error:
            logger.warning(text)
        return False

    # -- the engine: one install step, the shared model list -----------------------------------
    def ensureInstalled(self) -> bool:
        """The Segment module's install step, before the first engine run of this module too."""
        try:
            return self.logic.segmentLogic.installLogic.ensure(askConfirmation=True)
        except InstallError as e:
            slicer.util.errorDisplay(str(e), detailedText=e.details)
            return False

    def refreshModels(self, force: bool = False, wanted: str = "") -> None:
        """Base models from the list both modules share; read in the background when asked."""
        segmentLogic = self.logic.segmentLogic
        if MODEL_LIST.choices is not None and not force:
            self.settingsPage.fillModels(segmentLogic.models, wanted)
            return
        self.settingsPage.fillModels(segmentLogic.models, wanted)  # "Train from scratch" works meanwhile
        self.wantedBaseModel = wanted or self.wantedBaseModel
        if self.listRun is not None or not segmentLogic.installLogic.plan().empty:
            return
        try:
            self.listRun = segmentLogic.startModelList()
        except RuntimeError as e:
            self.ui.baseModelInfoLabel.text = f"Model list unavailable ({e}); you can still train from scratch."
            return
        self.listTimer.start()

    def onListTimer(self) -> None:
        segmentLogic = self.logic.segmentLogic
        if not segmentLogic.poll(self.listRun):
            return
        self.listTimer.stop()
        run, self.listRun = self.listRun, None
        try:
            segmentLogic.finish(run)
        except (CatalogError, RuntimeError) as e:
            self.ui.baseModelInfoLabel.text = f"Model list unavailable ({e}); you can still train from scratch."
            return
        wanted, self.wantedBaseModel = self.wantedBaseModel, ""
        self.settingsPage.fillModels(segmentLogic.models, wanted)

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
        base = self.logic.segmentLogic.model(baseModelId)  # None while the model list is being read
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
        settings = self.settingsPage.settings()
        self.logic.saveSettings(settings)
        folder = Path(self.ui.folderPathEdit.text) if self.casesPage.fromFolder() else None
        try:
            with slicer.util.tryWithErrorDisplay("Writing the training cases failed.", waitCursor=True):
                jobDir, state = self.logic.createJob(
                    settings, Path(self.ui.jobsFolderEdit.text), self.cases, self.labels, datasetDir=folder,
                    onCase=lambda i, n, name: self.say(f"Writing case {i + 1}/{n}: {name}", error=False))
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
