"""The Train wizard: binds Resources/UI/MedNeXtV2Train.ui to the logic, and talks to people.

Five pages in a stacked widget (Cases, Labels, Base model & settings, Train, Finish); Next
checks the current page first and says what to fix. This file holds the navigation and the
first three pages; run_pages.py the training run and the new model.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import qt
import slicer

from MedNeXtV2SegmentLib.models import describe_model
from MedNeXtV2TrainLib.case_checks import has_errors
from MedNeXtV2TrainLib.label_table import BASE, IGNORE, NEW, LabelChoice, dataset_labels, default_choices
from MedNeXtV2TrainLib.logic import MedNeXtV2TrainLogic, base_labels, default_jobs_root
from MedNeXtV2TrainLib.presets import PRESETS
from MedNeXtV2TrainLib.run_pages import RunPages
from MedNeXtV2TrainLib.scene_cases import SceneCase
from MedNeXtV2TrainLib.settings import ARCHITECTURES, TrainSettings
from MedNeXtV2TrainLib.train_command import SettingsError

logger = logging.getLogger(__name__)
PAGES = ("Cases", "Labels", "Base model & settings", "Train", "Finish")
CASES, LABELS, SETTINGS, TRAIN, FINISH = range(5)
USE, CASE, VOLUME, SEGMENTATION, CHECK = range(5)
SEGMENT, COLOR, COUNT, MAP_TO, LABEL_NAME = range(5)


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
        self.runPages = RunPages(self.ui, self.logic, self.say, self.onRunChanged)
        self.ui.backButton.connect("clicked(bool)", lambda: self.goTo(self.ui.wizardStack.currentIndex - 1))
        self.ui.nextButton.connect("clicked(bool)", self.onNext)
        self.ui.sourceFolderRadio.connect("toggled(bool)", self.onSourceChanged)
        self.ui.browseFolderButton.connect("clicked(bool)", self.onBrowseFolder)
        self.ui.autoPairButton.connect("clicked(bool)", self.fillCasesFromScene)
        self.ui.addCaseButton.connect("clicked(bool)", lambda: self.addCaseRow("", None, None))
        self.ui.removeCaseButton.connect("clicked(bool)", self.onRemoveCase)
        self.ui.checkCasesButton.connect("clicked(bool)", self.checkCases)
        self.ui.resetLabelsButton.connect("clicked(bool)", self.fillLabels)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.refreshModels)
        self.ui.baseModelComboBox.connect("currentIndexChanged(int)", self.onBaseModelChanged)
        self.ui.presetComboBox.connect("currentIndexChanged(int)", self.onPresetChanged)
        self.ui.browseJobsFolderButton.connect("clicked(bool)", self.onBrowseJobsFolder)
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        for arch in ARCHITECTURES:
            self.ui.architectureComboBox.addItem(arch)
        for preset in PRESETS.values():
            self.ui.presetComboBox.addItem(f"{preset.title} ({preset.budget_text()})", preset.name)
        self.ui.jobsFolderEdit.text = str(default_jobs_root())
        self.ui.casesTable.horizontalHeader().setSectionResizeMode(qt.QHeaderView.ResizeToContents)
        self.refreshModels()
        self.setSettings(self.logic.loadSettings())
        self.fillCasesFromScene()
        self.refreshResumable()
        self.goTo(CASES)

    def cleanup(self) -> None:
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

    def onNext(self) -> None:
        page = self.ui.wizardStack.currentIndex
        checks = {CASES: self.checkCases, LABELS: self.checkLabels, SETTINGS: self.checkSettings,
                  TRAIN: lambda: self.runPages.trained is not None or self.say("Train a model first (or resume one).")}
        if checks.get(page, lambda: True)():
            if page == CASES:
                self.fillLabels()
            self.goTo(page + 1)

    def say(self, text: str, error: bool = True) -> bool:
        """Show a status line; returns False so a failed page check can `return self.say(...)`."""
        self.ui.statusLabel.text = text
        if error:
            logger.warning(text)
        return False

    # -- page 1: cases -------------------------------------------------------------------------
    def fromFolder(self) -> bool:
        return self.ui.sourceFolderRadio.checked

    def onSourceChanged(self, fromFolder: bool) -> None:
        self.ui.folderPathEdit.enabled = fromFolder
        self.ui.browseFolderButton.enabled = fromFolder
        for button in (self.ui.autoPairButton, self.ui.addCaseButton, self.ui.removeCaseButton):
            button.enabled = not fromFolder
        self.ui.casesTable.setRowCount(0)
        if not fromFolder:
            self.fillCasesFromScene()

    def onBrowseFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(None, "Dataset folder", self.ui.folderPathEdit.text)
        if folder:
            self.ui.folderPathEdit.text = folder
            self.fillCasesFromFolder()

    def fillCasesFromFolder(self) -> bool:
        from mednextv2.errors import InputError
        from mednextv2.train.datasets import discover_dataset

        self.ui.casesTable.setRowCount(0)
        if not self.ui.folderPathEdit.text.strip():
            return self.say("Choose the dataset folder (Browse...).")
        try:
            self.folderDataset = discover_dataset(self.ui.folderPathEdit.text.strip())
        except InputError as e:
            self.ui.caseProblemsText.setPlainText(str(e))
            return False
        for case in self.folderDataset.cases:
            row = self.ui.casesTable.rowCount
            self.ui.casesTable.insertRow(row)
            for column, text in ((CASE, case.name), (VOLUME, case.images[0].name), (SEGMENTATION, case.label.name), (CHECK, "")):
                item = qt.QTableWidgetItem(text)
                item.setFlags(qt.Qt.ItemIsEnabled)
                self.ui.casesTable.setItem(row, column, item)
        self.ui.caseProblemsText.setPlainText(f"{len(self.folderDataset.cases)} case(s); the engine checks every "
                                              "file before training starts.")
        return len(self.folderDataset.cases) >= 2 or self.say("The folder needs at least 2 cases.")

    def fillCasesFromScene(self) -> None:
        self.ui.casesTable.setRowCount(0)
        pairing = self.logic.pairScene()
        for pair in pairing.pairs:
            volume = slicer.mrmlScene.GetNodeByID(pair.volume_id)
            self.addCaseRow(volume.GetName(), pair.volume_id, pair.segmentation_id, pair.reason)
        unpaired = len(pairing.unpaired_segmentations)
        self.say(f"{len(pairing.pairs)} case(s) paired" + (f"; {unpaired} segmentation(s) without a volume: "
                 "add a row to pair them by hand." if unpaired else "."), error=False)

    def addCaseRow(self, name: str, volumeId: Optional[str], segmentationId: Optional[str], reason: str = "") -> None:
        table = self.ui.casesTable
        row = table.rowCount
        table.insertRow(row)
        use = qt.QTableWidgetItem()
        use.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsUserCheckable)
        use.setCheckState(qt.Qt.Checked)
        table.setItem(row, USE, use)
        table.setItem(row, CASE, qt.QTableWidgetItem(name or f"case{row + 1}"))
        for column, className, selected in ((VOLUME, "vtkMRMLScalarVolumeNode", volumeId),
                                            (SEGMENTATION, "vtkMRMLSegmentationNode", segmentationId)):
            combo = qt.QComboBox()
            for node in slicer.util.getNodesByClass(className):
                if not node.IsA("vtkMRMLLabelMapVolumeNode"):
                    combo.addItem(node.GetName(), node.GetID())
            combo.setCurrentIndex(max(0, combo.findData(selected)) if selected else -1)
            table.setCellWidget(row, column, combo)
        table.setItem(row, CHECK, qt.QTableWidgetItem(reason))

    def onRemoveCase(self) -> None:
        rows = sorted({index.row() for index in self.ui.casesTable.selectedIndexes()}, reverse=True)
        for row in rows:
            self.ui.casesTable.removeRow(row)

    def sceneCases(self) -> List[SceneCase]:
        table, cases = self.ui.casesTable, []
        for row in range(table.rowCount):
            if table.item(row, USE).checkState() != qt.Qt.Checked:
                continue
            volumeId = table.cellWidget(row, VOLUME).currentData
            segmentationId = table.cellWidget(row, SEGMENTATION).currentData
            if not volumeId or not segmentationId:
                raise ValueError(f"row {row + 1}: pick both a volume and a segmentation, or untick the row")
            cases.append(SceneCase(table.item(row, CASE).text().strip(), slicer.mrmlScene.GetNodeByID(volumeId),
                                   slicer.mrmlScene.GetNodeByID(segmentationId)))
        return cases

    def checkCases(self) -> bool:
        if self.fromFolder():
            return self.fillCasesFromFolder()
        try:
            self.cases = self.sceneCases()
            with slicer.util.tryWithErrorDisplay("Checking the cases failed.", waitCursor=True):
                problems, self.union, self.segmentsByCase = self.logic.checkCases(self.cases)
        except (ValueError, RuntimeError) as e:
            return self.say(str(e))
        table = self.ui.casesTable
        for row in range(table.rowCount):
            if table.item(row, USE).checkState() != qt.Qt.Checked:
                table.item(row, CHECK).setText("left out")
                continue
            name = table.item(row, CASE).text().strip()
            own = [p for p in problems if p.case == name]
            table.item(row, CHECK).setText("error" if has_errors(own) else "warning" if own else "ok")
        self.ui.caseProblemsText.setPlainText("\n".join(f"[{p.severity}] {p}" for p in problems) or "All cases look fine.")
        if has_errors(problems):
            return self.say("Fix the errors listed under the table (or untick those cases) first.")
        self.say(f"{len(self.cases)} cases ready.", error=False)
        return True

    # -- page 2: labels ------------------------------------------------------------------------
    def currentModel(self):
        modelId = self.ui.baseModelComboBox.currentData
        return next((m for m in self.models if m.id == modelId), None)

    def fillLabels(self) -> None:
        table = self.ui.labelsTable
        table.setRowCount(0)
        if self.fromFolder():
            labels = self.folderDataset.labels if self.folderDataset is not None else {}
            for value, name in sorted(labels.items()):
                row = table.rowCount
                table.insertRow(row)
                for column, text in ((SEGMENT, name), (COUNT, "all"), (MAP_TO, "by name"), (LABEL_NAME, name)):
                    table.setItem(row, column, qt.QTableWidgetItem(text))
            self.ui.labelsSummaryLabel.text = "Labels come from the folder's dataset.json; the engine maps them to the base model by name."
            return
        base = base_labels(self.currentModel())
        for segment, choice in zip(self.union, default_choices(self.union, base)):
            row = table.rowCount
            table.insertRow(row)
            table.setItem(row, SEGMENT, qt.QTableWidgetItem(segment.name))
            swatch = qt.QTableWidgetItem("")
            swatch.setBackground(qt.QBrush(qt.QColor(*segment.color)))
            table.setItem(row, COLOR, swatch)
            table.setItem(row, COUNT, qt.QTableWidgetItem(f"{segment.case_count}/{len(self.cases)}"))
            combo = qt.QComboBox()
            combo.addItem("New label", NEW)
            combo.addItem("Leave out", IGNORE)
            for label in base:
                combo.addItem(f"Base: {label.name}", label.name)
            combo.setCurrentIndex(combo.findData(choice.target) if choice.kind == BASE else 0)
            table.setCellWidget(row, MAP_TO, combo)
            table.setItem(row, LABEL_NAME, qt.QTableWidgetItem(choice.target))
        self.ui.labelsSummaryLabel.text = f"{len(self.union)} segment name(s) across {len(self.cases)} case(s)."

    def labelChoices(self) -> List[LabelChoice]:
        table, choices = self.ui.labelsTable, []
        for row in range(table.rowCount):
            segment = table.item(row, SEGMENT).text()
            data = table.cellWidget(row, MAP_TO).currentData
            if data == NEW:
                choices.append(LabelChoice(segment, NEW, table.item(row, LABEL_NAME).text()))
            elif data == IGNORE:
                choices.append(LabelChoice(segment, IGNORE))
            else:
                choices.append(LabelChoice(segment, BASE, data))
        return choices

    def checkLabels(self) -> bool:
        if self.fromFolder():
            return True
        try:
            self.labels = dataset_labels(self.union, self.labelChoices(), base_labels(self.currentModel()))
        except ValueError as e:
            return self.say(f"Labels: {e}")
        self.say("Labels: " + ", ".join(f"{l.value} = {l.name}" for l in self.labels), error=False)
        return True

    # -- page 3: base model and settings -------------------------------------------------------
    def refreshModels(self) -> None:
        combo = self.ui.baseModelComboBox
        combo.blockSignals(True)
        combo.clear()
        combo.addItem("Train from scratch", "")
        try:
            self.models = self.logic.models()
        except Exception as e:  # the model list is optional here: training from scratch still works
            self.models = []
            self.ui.baseModelInfoLabel.text = f"Model list unavailable ({e}); you can still train from scratch."
        for model in self.models:
            combo.addItem(describe_model(model), model.id)
        combo.blockSignals(False)
        self.onBaseModelChanged()

    def onBaseModelChanged(self, index: int = -1) -> None:
        model = self.currentModel()
        if self.union and not self.fromFolder():
            self.fillLabels()  # the mapping targets are the base model's labels
            self.say("Labels were mapped again for this base model; check them on the Labels page.", error=False)
        self.ui.architectureComboBox.enabled = model is None
        if model is None:
            self.ui.baseModelInfoLabel.text = "A new network of the chosen architecture, trained from random weights."
        else:
            self.ui.baseModelInfoLabel.text = (f"Fine-tune {model.title}: {', '.join(model.labels)}."
                                               + ("" if model.downloaded else " It is downloaded when training starts."))
            if model.modality in ("CT", "MR"):
                self.ui.modalityComboBox.setCurrentIndex(self.ui.modalityComboBox.findText(model.modality))

    def onPresetChanged(self, index: int = -1) -> None:
        name = self.ui.presetComboBox.currentData
        if name:
            self.setSettings(self.settings().with_preset(name))

    def settings(self) -> TrainSettings:
        byTime = self.ui.budgetMinutesRadio.checked
        return TrainSettings(
            model_name=self.ui.modelNameEdit.text, base_model=self.ui.baseModelComboBox.currentData or None,
            architecture=self.ui.architectureComboBox.currentText, modality=self.ui.modalityComboBox.currentText,
            preset=self.ui.presetComboBox.currentData or "quick",
            minutes=self.ui.minutesSpinBox.value if byTime else None, epochs=None if byTime else self.ui.epochsSpinBox.value,
            patch_size=(self.ui.patchZSpinBox.value, self.ui.patchYSpinBox.value, self.ui.patchXSpinBox.value),
            device=self.ui.deviceComboBox.currentText, val_fraction=round(self.ui.valFractionSpinBox.value, 3))

    def setSettings(self, s: TrainSettings) -> None:
        self.ui.modelNameEdit.text = s.model_name
        base = self.ui.baseModelComboBox.findData(s.base_model or "")
        if base >= 0:  # a model no longer in the list leaves the current choice
            self.ui.baseModelComboBox.setCurrentIndex(base)
        self.ui.architectureComboBox.setCurrentIndex(max(0, self.ui.architectureComboBox.findText(s.architecture)))
        self.ui.modalityComboBox.setCurrentIndex(max(0, self.ui.modalityComboBox.findText(s.modality)))
        self.ui.presetComboBox.blockSignals(True)
        self.ui.presetComboBox.setCurrentIndex(max(0, self.ui.presetComboBox.findData(s.preset)))
        self.ui.presetComboBox.blockSignals(False)
        self.ui.presetInfoLabel.text = PRESETS[s.preset].description
        self.ui.budgetMinutesRadio.checked = s.minutes is not None
        self.ui.budgetEpochsRadio.checked = s.minutes is None
        if s.minutes is not None:
            self.ui.minutesSpinBox.value = s.minutes
        if s.epochs is not None:
            self.ui.epochsSpinBox.value = s.epochs
        if s.patch_size is not None:
            self.ui.patchZSpinBox.value, self.ui.patchYSpinBox.value, self.ui.patchXSpinBox.value = s.patch_size
        self.ui.deviceComboBox.setCurrentIndex(max(0, self.ui.deviceComboBox.findText(s.device)))
        self.ui.valFractionSpinBox.value = s.val_fraction

    def onBrowseJobsFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(None, "Training folder", self.ui.jobsFolderEdit.text)
        if folder:
            self.ui.jobsFolderEdit.text = folder
            self.refreshResumable()

    def checkSettings(self) -> bool:
        problems = self.settings().problems()
        return self.say(" ".join(problems)) if problems else True

    # -- page 4: train -------------------------------------------------------------------------
    def refreshResumable(self) -> None:
        self.runPages.refreshResumable(Path(self.ui.jobsFolderEdit.text))

    def onStart(self) -> None:
        if not (self.checkSettings() and (self.fromFolder() or self.checkLabels())):
            return
        settings = self.settings()
        self.logic.saveSettings(settings)
        folder = Path(self.ui.folderPathEdit.text) if self.fromFolder() else None
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
