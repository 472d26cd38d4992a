"""The wizard's third page: the base model (or an architecture, from scratch), the budget and the
device. `settings()` / `setSettings()` map the page to the one TrainSettings object."""
from __future__ import annotations

import os

import qt

from MedNeXtV2SegmentLib.models import describe_model
from MedNeXtV2TrainLib.presets import TRAINING_PRESETS
from MedNeXtV2TrainLib.settings import ARCHITECTURES, BASE_FILE_SUFFIXES, TrainSettings, is_base_file


AUTO_VAL_FRACTION = -0.05  # the validation box's minimum and special value "auto" (the .ui sets both)
# The base choice that opens a file dialog; never a model id (ids are lower-case slugs) nor a path.
FROM_FILE = "<from a file>"
FROM_FILE_TEXT = "From a file (AMAES pretrained encoder)..."
BASE_FILE_FILTER = "Pretrained MedNeXt encoder ({})".format(" ".join("*" + s for s in BASE_FILE_SUFFIXES))


class SettingsPage:
    def __init__(self, wizard) -> None:
        self.wizard, self.ui, self.logic, self.say = wizard, wizard.ui, wizard.logic, wizard.say
        self.ui.refreshModelsButton.connect("clicked(bool)", lambda: self.wizard.refreshModels(force=True))
        self.ui.baseModelComboBox.connect("currentIndexChanged(int)", self.onBaseModelChanged)
        self.ui.presetComboBox.connect("currentIndexChanged(int)", self.onPresetChanged)
        self.ui.browseJobsFolderButton.connect("clicked(bool)", self.onBrowseJobsFolder)
        for arch in ARCHITECTURES:
            self.ui.architectureComboBox.addItem(arch)
        for preset in TRAINING_PRESETS.values():
            self.ui.presetComboBox.addItem(f"{preset.title} ({preset.budget_text()})", preset.name)

    def currentModel(self):
        modelId = self.ui.baseModelComboBox.currentData
        return next((m for m in self.wizard.models if m.id == modelId), None)

    def fillModels(self, models, wanted: str = "") -> None:
        """The base-model choices: the shared cached list (read in the background by the wizard)."""
        combo = self.ui.baseModelComboBox
        current = wanted or combo.currentData
        self.wizard.models = list(models)
        combo.blockSignals(True)
        combo.clear()
        combo.addItem("Train from scratch", "")
        for model in self.wizard.models:
            combo.addItem(describe_model(model), model.id)
        if is_base_file(current):
            self.baseFile = current
        if getattr(self, "baseFile", ""):
            combo.addItem(self._fileItemText(self.baseFile), self.baseFile)
        combo.addItem(FROM_FILE_TEXT, FROM_FILE)
        combo.setCurrentIndex(max(0, combo.findData(current)) if current else 0)
        combo.blockSignals(False)
        self.onBaseModelChanged()

    @staticmethod
    def _fileItemText(path: str) -> str:
        return f"Encoder file: {os.path.basename(path)}"

    def chooseBaseFile(self) -> None:
        """The "from a file" choice: a file dialog; cancelling it keeps the choice made before."""
        start = os.path.dirname(getattr(self, "baseFile", "") or "")
        path = qt.QFileDialog.getOpenFileName(None, "Pretrained MedNeXt encoder (AMAES)", start, BASE_FILE_FILTER)
        if path:
            self.setBaseFile(path)
        else:
            self._selectBase(getattr(self, "chosenBase", ""))

    def setBaseFile(self, path: str) -> None:
        """Offer `path` as the base (one file at a time) and select it."""
        combo = self.ui.baseModelComboBox
        previous = getattr(self, "baseFile", "")
        combo.blockSignals(True)
        if previous and combo.findData(previous) >= 0:
            combo.removeItem(combo.findData(previous))
        self.baseFile = path
        combo.insertItem(combo.findData(FROM_FILE), self._fileItemText(path), path)
        combo.blockSignals(False)
        self._selectBase(path)

    def _selectBase(self, data: str) -> None:
        """Select the choice whose data is `data` (else scratch) and update the page once."""
        combo = self.ui.baseModelComboBox
        combo.blockSignals(True)
        combo.setCurrentIndex(max(0, combo.findData(data)))
        combo.blockSignals(False)
        self.onBaseModelChanged()

    def onBaseModelChanged(self, index: int = -1) -> None:
        data = self.ui.baseModelComboBox.currentData
        if data == FROM_FILE:
            self.chooseBaseFile()
            return
        self.chosenBase = data or ""
        if is_base_file(data):
            self.ui.architectureComboBox.enabled = False
            self.ui.baseModelInfoLabel.text = (
                f"Fine-tune the pretrained encoder in {data}: the encoder is loaded and the decoder starts fresh. "
                "Images are prepared as AMAES pretrained it (RAS, 1 mm, its volume normalisation). Only AMAES "
                "MedNeXt encoder files are read, as weights only; check the file's licence and data-use terms.")
            self.ui.modalityComboBox.setCurrentIndex(self.ui.modalityComboBox.findText("MR"))
            return
        model = self.currentModel()
        if self.wizard.union and not self.wizard.casesPage.fromFolder():
            self.wizard.labelsPage.fillLabels()  # the mapping targets are the base model's labels
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
            patch_size=self._patch(),
            device=self.ui.deviceComboBox.currentText, val_fraction=self._val_fraction())

    def _patch(self):
        """The three spin boxes; any one at "auto" (0) leaves the patch to the engine's plan."""
        sides = (self.ui.patchZSpinBox.value, self.ui.patchYSpinBox.value, self.ui.patchXSpinBox.value)
        return None if 0 in sides else sides

    def _val_fraction(self):
        """The box's value; its minimum, shown as "auto", leaves the split to the engine's rule."""
        value = self.ui.valFractionSpinBox.value
        return None if value < 0 else round(value, 3)

    def setSettings(self, s: TrainSettings) -> None:
        self.ui.modelNameEdit.text = s.model_name
        base = self.ui.baseModelComboBox.findData(s.base_model or "")
        if is_base_file(s.base_model) and base < 0:
            self.setBaseFile(s.base_model)
        elif base >= 0:  # a model no longer in the list leaves the current choice
            self.ui.baseModelComboBox.setCurrentIndex(base)
        self.ui.architectureComboBox.setCurrentIndex(max(0, self.ui.architectureComboBox.findText(s.architecture)))
        self.ui.modalityComboBox.setCurrentIndex(max(0, self.ui.modalityComboBox.findText(s.modality)))
        self.ui.presetComboBox.blockSignals(True)
        self.ui.presetComboBox.setCurrentIndex(max(0, self.ui.presetComboBox.findData(s.preset)))
        self.ui.presetComboBox.blockSignals(False)
        self.ui.presetInfoLabel.text = TRAINING_PRESETS[s.preset].description
        self.ui.budgetMinutesRadio.checked = s.minutes is not None
        self.ui.budgetEpochsRadio.checked = s.minutes is None
        if s.minutes is not None:
            self.ui.minutesSpinBox.value = s.minutes
        if s.epochs is not None:
            self.ui.epochsSpinBox.value = s.epochs
        # 0 is each spin box's minimum, shown as its special value "auto" (the .ui sets both)
        self.ui.patchZSpinBox.value, self.ui.patchYSpinBox.value, self.ui.patchXSpinBox.value = s.patch_size or (0, 0, 0)
        self.ui.deviceComboBox.setCurrentIndex(max(0, self.ui.deviceComboBox.findText(s.device)))
        self.ui.valFractionSpinBox.value = AUTO_VAL_FRACTION if s.val_fraction is None else s.val_fraction

    def onBrowseJobsFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(None, "Training folder", self.ui.jobsFolderEdit.text)
        if folder:
            self.ui.jobsFolderEdit.text = folder
            self.wizard.refreshResumable()

    def checkSettings(self) -> bool:
        problems = self.settings().problems()
        return self.say(" ".join(problems)) if problems else True
