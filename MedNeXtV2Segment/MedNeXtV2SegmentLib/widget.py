"""The Segment panel: binds Resources/UI/MedNeXtV2Segment.ui to the logic, and talks to people.

Runs never block Slicer: the engine is a child process whose output a 100 ms timer drains.
While a run is in flight the Segment (or Download) button becomes Cancel.
"""
from __future__ import annotations

import logging
from typing import Optional

import qt
import slicer

from .install import InstallError, InstallLogic
from .logic import EngineError, EngineRun, MedNeXtV2SegmentLogic
from .models import CatalogError, describe_model, time_hint
from .parameters import SegmentChoices
from .progress import ProgressEvent, format_duration, format_progress

logger = logging.getLogger(__name__)

DEVICE_CHOICES = (("auto", "Auto (GPU if available)"), ("cuda", "NVIDIA GPU (CUDA)"), ("mps", "Apple GPU (MPS)"),
                  ("cpu", "CPU"))


class SegmentPanel:
    def __init__(self, uiWidget, logic: Optional[MedNeXtV2SegmentLogic] = None,
                 installLogic: Optional[InstallLogic] = None) -> None:
        self.uiWidget = uiWidget
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = logic or MedNeXtV2SegmentLogic()
        self.installLogic = installLogic or InstallLogic()
        self.run: Optional[EngineRun] = None
        self.cancelButton = None
        self.dependenciesReady = False
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        self.timer.connect("timeout()", self.onTimer)
        for device, text in DEVICE_CHOICES:
            self.ui.deviceSelector.addItem(text, device)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.downloadModelButton.connect("clicked(bool)", self.onDownload)
        self.ui.importModelButton.connect("clicked(bool)", self.onImport)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.refreshModels)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceSelector.connect("currentIndexChanged(int)", self.updateHints)
        self.ui.ttaCheckBox.connect("toggled(bool)", self.updateHints)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtons)
        self.ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onOutputChanged)
        self.refreshModels()
        self.setOptions(self.logic.loadOptions())

    def cleanup(self) -> None:
        self.timer.stop()
        if self.run is not None:
            self.logic.cancel(self.run)
            self.run = None

    # -- options <-> GUI -------------------------------------------------------------------------
    def options(self) -> SegmentChoices:
        items = [self.ui.structuresList.item(i) for i in range(self.ui.structuresList.count)]
        checked = [it.text() for it in items if it.checkState() == qt.Qt.Checked]
        return SegmentChoices(model=self.ui.modelSelector.currentData or "",
                              device=self.ui.deviceSelector.currentData or "auto",
                              tta=self.ui.ttaCheckBox.checked, fast=self.ui.fastCheckBox.checked,
                              structures=() if len(checked) == len(items) else tuple(checked))

    def setOptions(self, options: SegmentChoices) -> None:
        index = self.ui.modelSelector.findData(options.model)
        if index >= 0:
            self.ui.modelSelector.setCurrentIndex(index)
        self.ui.deviceSelector.setCurrentIndex(max(0, self.ui.deviceSelector.findData(options.device)))
        self.ui.ttaCheckBox.checked = options.tta
        self.ui.fastCheckBox.checked = options.fast
        self.fillStructures(options.structures)

    # -- models -------------------------------------------------------------------------------
    def refreshModels(self) -> None:
        # Before the first install the engine cannot even list models; Segment then installs.
        self.dependenciesReady = self.installLogic.plan().empty
        if not self.dependenciesReady:
            self.ui.modelInfoLabel.text = "MedNeXtV2 needs a few Python packages first: press Install dependencies."
            self.updateButtons()
            return
        current = self.ui.modelSelector.currentData
        self.ui.modelSelector.blockSignals(True)
        self.ui.modelSelector.clear()
        try:
            for choice in self.logic.refreshModels():
                self.ui.modelSelector.addItem(describe_model(choice), choice.id)
        except CatalogError as e:
            self.ui.modelInfoLabel.text = f"Model list unavailable: {e}"
            self.appendLog(str(e))
        self.ui.modelSelector.blockSignals(False)
        index = self.ui.modelSelector.findData(current) if current else 0
        self.ui.modelSelector.setCurrentIndex(max(index, 0))
        self.onModelChanged()

    def currentModel(self):
        return self.logic.model(self.ui.modelSelector.currentData or "")

    def onModelChanged(self, index: int = -1) -> None:
        choice = self.currentModel()
        if choice is None:
            if self.ui.modelSelector.count == 0:
                self.ui.modelInfoLabel.text = "No models yet: import one, or check the catalog."
        else:
            structures = ", ".join(choice.labels) or "unknown"
            self.ui.modelInfoLabel.text = f"{choice.title}. Structures: {structures}."
        self.fillStructures(())
        self.updateHints()
        self.updateButtons()

    def fillStructures(self, selected) -> None:
        choice = self.currentModel()
        self.ui.structuresList.clear()
        for name in (choice.labels if choice else ()):
            item = qt.QListWidgetItem(name)
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Checked if not selected or name in selected else qt.Qt.Unchecked)
            self.ui.structuresList.addItem(item)

    def updateHints(self, *unused) -> None:
        self.ui.deviceHintLabel.text = time_hint(self.currentModel(), self.ui.deviceSelector.currentData or "auto",
                                                 self.ui.ttaCheckBox.checked)

    def updateButtons(self, *unused) -> None:
        buttons = (self.ui.applyButton, self.ui.downloadModelButton, self.ui.importModelButton)
        if self.run is not None:  # only the Cancel of the running action stays usable
            for button in buttons:
                button.enabled = button == self.cancelButton
            return
        if not self.dependenciesReady:
            self.ui.applyButton.text = "Install dependencies"
            self.ui.applyButton.enabled = True
            self.ui.applyButton.toolTip = "Install torch (through the PyTorch extension), pynrrd and safetensors."
            self.ui.downloadModelButton.enabled = self.ui.importModelButton.enabled = False
            return
        choice = self.currentModel()
        self.ui.applyButton.text = "Segment"
        self.ui.downloadModelButton.text = "Download"
        self.ui.downloadModelButton.enabled = choice is not None and not choice.downloaded
        self.ui.importModelButton.enabled = True
        volume = self.ui.inputVolumeSelector.currentNode()
        self.ui.applyButton.enabled = choice is not None and choice.downloaded and volume is not None
        if choice is None:
            self.ui.applyButton.toolTip = "Select or import a model."
        elif not choice.downloaded:
            self.ui.applyButton.toolTip = "Download the model first."
        elif volume is None:
            self.ui.applyButton.toolTip = "Select an input volume."
        else:
            self.ui.applyButton.toolTip = "Run the model on the input volume. Becomes Cancel while running."

    def onOutputChanged(self, node) -> None:
        self.ui.show3DButton.setSegmentationNode(node)

    # -- actions ------------------------------------------------------------------------------
    def onApply(self) -> None:
        if self.run is not None:
            self.cancel()
            return
        try:
            if not self.installLogic.ensure(askConfirmation=True):
                return
            if not self.dependenciesReady:  # this press was "Install dependencies"
                self.refreshModels()
                self.ui.statusLabel.text = "Python packages installed."
                return
            options = self.options()
            self.logic.saveOptions(options)
            run = self.logic.start(self.ui.inputVolumeSelector.currentNode(), options,
                                   self.ui.outputSegmentationSelector.currentNode())
        except InstallError as e:
            slicer.util.errorDisplay(str(e), detailedText=e.details)
            return
        except (RuntimeError, ValueError) as e:  # EngineError, a process that cannot start, bad paths
            slicer.util.errorDisplay(str(e))
            return
        self.begin(run, "Cancel", self.ui.applyButton)

    def onDownload(self) -> None:
        if self.run is not None:
            self.cancel()
            return
        choice = self.currentModel()
        if choice is not None:
            self.startModelAction("download", choice.id, "Cancel download", self.ui.downloadModelButton)

    def startModelAction(self, action: str, argument: str, cancelText: str, button) -> None:
        try:
            run = self.logic.startModelAction(action, argument)
        except RuntimeError as e:
            slicer.util.errorDisplay(str(e))
            return
        self.begin(run, cancelText, button)

    def onImport(self) -> None:
        box = qt.QMessageBox(qt.QMessageBox.Question, "Import model", "Import a model from a folder (bundle or "
                             "nnU-Net v2 results folder) or from a zipped bundle?", qt.QMessageBox.Cancel,
                             slicer.util.mainWindow())
        folderButton = box.addButton("Folder...", qt.QMessageBox.AcceptRole)
        zipButton = box.addButton("Zip file...", qt.QMessageBox.AcceptRole)
        box.exec_()
        if box.clickedButton() == folderButton:
            path = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Model folder")
        elif box.clickedButton() == zipButton:
            path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Zipped model bundle", "", "Model bundle (*.zip)")
        else:
            return
        if path:
            self.startModelAction("import", path, "Cancel import", self.ui.applyButton)

    def begin(self, run: EngineRun, cancelText: str, button) -> None:
        self.run, self.cancelButton = run, button
        self.updateButtons()
        button.text = cancelText
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setFormat("starting...")
        self.ui.statusLabel.text = ""
        self.appendLog(f"--- {run.kind}: {' '.join(run.process.args)}")
        self.timer.start()

    def cancel(self) -> None:
        self.ui.statusLabel.text = "Cancelling..."
        slicer.app.processEvents()
        self.timer.stop()
        self.logic.cancel(self.run)
        self.end("Cancelled.")

    def onTimer(self) -> None:
        if not self.logic.poll(self.run, self.onProgress, self.appendLog):
            return
        self.timer.stop()
        run, elapsed = self.run, format_duration(self.run.process.elapsed_s)
        try:
            node = self.logic.finish(run)
        except EngineError as e:
            self.end(f"Failed after {elapsed}.")
            slicer.util.errorDisplay(str(e), detailedText=e.stderrTail or "\n".join(run.log[-40:]))
            return
        if run.kind == "segment":
            # The selector stays as it was: a second run must not overwrite this result unasked.
            self.ui.show3DButton.setSegmentationNode(node)
            self.end(f"Done in {elapsed}: {node.GetSegmentation().GetNumberOfSegments()} segments in '{node.GetName()}'.")
        else:
            self.end(f"Model {run.kind} finished in {elapsed}.")
            self.refreshModels()

    def end(self, status: str) -> None:
        self.run = None
        self.ui.statusLabel.text = status
        self.ui.progressBar.setFormat(status)
        self.appendLog(status)
        self.updateButtons()

    def onProgress(self, event: ProgressEvent) -> None:
        self.ui.progressBar.setValue(event.percent)
        self.ui.progressBar.setFormat(format_progress(event))

    def appendLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)
