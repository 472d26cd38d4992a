"""The Segment panel: binds Resources/UI/MedNeXtV2Segment.ui to the logic, and talks to people.

Runs never block Slicer: the engine is a child process whose output a 100 ms timer drains, and so
are the model list and the GPU check (background runs, cached for both modules). While a run is in
flight the Segment (or Download) button becomes Cancel; Cancel asks the engine to stop and the
timer escalates only if it does not. Device, TTA, the last model and "Show uncertainty" are
remembered in QSettings. After a run the panel shows the engine's per-segment numbers, and, with
Show uncertainty, walks the map's unsure regions (labelled once per map and threshold, never per click).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import qt
import slicer

from .install import InstallError
from .logic import EngineError, EngineRun, MedNeXtV2SegmentLogic
from .models import CatalogError, channel_prompts, describe_model, models_for_modality, time_hint
from .parameters import SegmentChoices
from .preferences import Preferences
from .progress import ProgressEvent, format_duration, format_progress
from .statistics import fill_table, table_text
from .timing import cpu_estimate_text, seconds_per_pass
from .unsure_regions import summary

logger = logging.getLogger(__name__)

# The panel's words for each device the engine takes (inference/options.DEVICES, listed in its order);
# an engine device without words here fails when the panel is built, not silently.
DEVICE_LABELS = {"auto": "Auto (GPU if available)", "cuda": "NVIDIA GPU (CUDA)", "mps": "Apple GPU (MPS)", "cpu": "CPU"}


class SegmentPanel:
    def __init__(self, uiWidget, logic: Optional[MedNeXtV2SegmentLogic] = None, settings=None) -> None:
        self.uiWidget = uiWidget
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = logic or MedNeXtV2SegmentLogic()
        self.engine = self.logic.engine  # install step, model list: shared with Train
        self.installLogic = self.engine.installLogic
        self.preferences = Preferences(settings if settings is not None else qt.QSettings())
        self.run: Optional[EngineRun] = None
        self.background: List[EngineRun] = []  # the GPU check: polled, never waited for
        self.segmentAfterDownload = False
        self.runModelId, self.runPasses = "", 0  # passes per tile of a CPU run (its rate is measured)
        self.wantedModel = ""  # a model to select once the (asynchronous) model list arrives
        self.lastResult = None  # (volume, segmentation, model id) of the last run: what "Improve this model" trains on
        self.step: Optional[float] = None  # no control on the panel: a saved scene's step is kept as it is
        self.cancelButton = None
        self.statistics = []  # the last run's rows (statistics.SegmentStatistics), as the table shows them
        self.uncertaintyNode, self.unsureTour = None, None  # the last run's map and its regions
        self.dependenciesReady = False
        self.channelSelectors = [self.ui.inputVolumeSelector]
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        self.timer.connect("timeout()", self.onTimer)
        self.backgroundTimer = qt.QTimer()
        self.backgroundTimer.setInterval(200)
        self.backgroundTimer.connect("timeout()", self.onBackgroundTimer)
        from mednextv2.inference.options import DEVICES

        for device in DEVICES:
            self.ui.deviceSelector.addItem(DEVICE_LABELS[device], device)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.downloadModelButton.connect("clicked(bool)", self.onDownload)
        self.ui.importModelButton.connect("clicked(bool)", self.onImport)
        self.ui.improveModelButton.connect("clicked(bool)", self.onImproveModel)
        self.ui.refreshModelsButton.connect("clicked(bool)", lambda: self.refreshModels(force=True))
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceSelector.connect("currentIndexChanged(int)", self.updateHints)
        self.ui.ttaCheckBox.connect("toggled(bool)", self.updateHints)
        self.ui.fastCheckBox.connect("toggled(bool)", self.updateHints)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)
        self.ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onOutputChanged)
        self.ui.nextUnsureRegionButton.connect("clicked(bool)", self.onNextUnsureRegion)
        self.ui.unsureThresholdSlider.connect("valueChanged(double)", self.onUnsureThresholdChanged)
        self.ui.copyStatisticsButton.connect("clicked(bool)", self.onCopyStatistics)
        self.engine.modelList.addListener(self.onModelList)
        saved = self.logic.loadOptions()  # the scene's choices win over the user's habits
        self.setOptions(saved if saved.model else self.preferences.load())
        self.showUnsureRegions()
        self.refreshModels()

    def cleanup(self) -> None:
        self.timer.stop()
        self.backgroundTimer.stop()
        self.engine.modelList.removeListener(self.onModelList)
        for run in [self.run] + self.background:
            if run is not None:
                run.process.cancel(grace_s=0.0)  # the module is going away: no one polls after this
        self.run, self.background = None, []

    # -- options <-> GUI -------------------------------------------------------------------------
    def options(self) -> SegmentChoices:
        items = [self.ui.structuresList.item(i) for i in range(self.ui.structuresList.count)]
        checked = [it.text() for it in items if it.checkState() == qt.Qt.Checked]
        return SegmentChoices(model=self.ui.modelSelector.currentData or "",
                              device=self.ui.deviceSelector.currentData or "auto",
                              tta=self.ui.ttaCheckBox.checked, fast=self.ui.fastCheckBox.checked, step=self.step,
                              structures=() if len(checked) == len(items) else tuple(checked),
                              uncertainty=self.ui.showUncertaintyCheckBox.checked)

    def setOptions(self, options: SegmentChoices) -> None:
        self.wantedModel = options.model  # selected once the (asynchronous) model list arrives
        self.step = options.step
        index = self.ui.modelSelector.findData(options.model)
        if index >= 0:
            self.ui.modelSelector.setCurrentIndex(index)
        self.ui.deviceSelector.setCurrentIndex(max(0, self.ui.deviceSelector.findData(options.device)))
        self.ui.ttaCheckBox.checked = options.tta
        self.ui.fastCheckBox.checked = options.fast
        self.ui.showUncertaintyCheckBox.checked = options.uncertainty
        self.fillStructures(options.structures)

    # -- models -------------------------------------------------------------------------------
    def refreshModels(self, force: bool = False) -> None:
        """Show the cached model list; read it again (in the background) when asked or not cached."""
        # Before the first install the engine cannot even list models; Segment then installs.
        self.dependenciesReady = self.installLogic.plan().empty
        if not self.dependenciesReady:
            self.ui.modelInfoLabel.text = "MedNeXtV2 needs a few Python packages first: press Install dependencies."
            self.updateButtons()
            return
        if self.engine.modelList.cuda is None and not any(r.kind == "probe" for r in self.background):
            self.startBackground(self.logic.startDeviceProbe)
        try:
            loading = self.engine.modelList.load(force)
        except RuntimeError as e:  # the engine's Python cannot start: say so, keep the panel usable
            self.ui.modelInfoLabel.text = f"MedNeXtV2 engine unavailable: {e}"
            return
        if loading:
            self.ui.modelInfoLabel.text = "Reading the model list..."
        else:
            self.fillModels()

    def selectModel(self, modelId: str) -> None:
        """Select `modelId` in the model list: now if it is listed, else as soon as the list that
        holds it arrives (the Train module calls this for a model it has just registered)."""
        self.wantedModel = modelId
        index = self.ui.modelSelector.findData(modelId)
        if index >= 0:
            self.wantedModel = ""
            self.ui.modelSelector.setCurrentIndex(index)

    def onModelList(self, error) -> None:
        """The engine client read the model list (after a Refresh, a download, an import or a
        model registered by Train): show it, or why it could not be read."""
        if error is not None:
            self.ui.modelInfoLabel.text = f"Model list unavailable: {error}"
            self.appendLog(str(error))
            self.segmentAfterDownload = False
            return
        self.fillModels()
        if self.segmentAfterDownload and self.run is None:
            self.segmentAfterDownload = False
            self.onApply()

    def startBackground(self, start) -> None:
        try:
            self.background.append(start())
        except RuntimeError as e:  # the engine's Python cannot start: say so, keep the panel usable
            self.ui.modelInfoLabel.text = f"MedNeXtV2 engine unavailable: {e}"
            return
        self.backgroundTimer.start()

    def onBackgroundTimer(self) -> None:
        for run in [r for r in self.background if self.logic.poll(r)]:
            self.background.remove(run)
            try:
                self.logic.finish(run)
            except (CatalogError, EngineError) as e:
                self.appendLog(f"GPU check failed: {e}")
                continue
            self.updateHints()
        if not self.background:
            self.backgroundTimer.stop()

    def fillModels(self) -> None:
        """The cached list, filtered by the input's modality (when it came from DICOM)."""
        current = self.wantedModel or self.ui.modelSelector.currentData
        modality = self.inputModality()
        choices = models_for_modality(self.engine.modelList.models, modality) or self.engine.modelList.models
        self.ui.modelSelector.blockSignals(True)
        self.ui.modelSelector.clear()
        for choice in choices:
            self.ui.modelSelector.addItem(describe_model(choice), choice.id)
        self.ui.modelSelector.blockSignals(False)
        index = self.ui.modelSelector.findData(current) if current else 0
        if index >= 0 and current == self.wantedModel:
            self.wantedModel = ""  # found: from now on the user's selection rules
        self.ui.modelSelector.setCurrentIndex(max(index, 0))
        self.ui.modelSelector.toolTip = (f"Models for {modality} (the input's DICOM modality)." if modality
                                         else "Every model; a volume loaded from DICOM shows only its modality's.")
        self.onModelChanged()

    def inputModality(self) -> str:
        volume = self.ui.inputVolumeSelector.currentNode()
        return self.logic.volumeModality(volume) if volume is not None else ""

    def onInputChanged(self, node=None) -> None:
        if self.engine.modelList.choices is not None:
            self.fillModels()  # the modality filter and the CPU estimate depend on the input
        self.updateHints()
        self.updateButtons()

    def currentModel(self):
        return self.engine.modelList.model(self.ui.modelSelector.currentData or "")

    def onModelChanged(self, index: int = -1) -> None:
        choice = self.currentModel()
        self.buildChannelSelectors(choice.channels if choice else ())
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

    def buildChannelSelectors(self, channels) -> None:
        """One volume selector per model input; the .ui's selector is the first."""
        prompts = channel_prompts(channels)
        form = self.ui.inputVolumeSelector.parentWidget().layout()  # the Input and model QFormLayout
        while len(self.channelSelectors) > max(1, len(prompts)):
            form.removeRow(self.channelSelectors.pop())
        while len(self.channelSelectors) < len(prompts):
            selector = slicer.qMRMLNodeComboBox()
            selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
            selector.showChildNodeTypes = False
            selector.addEnabled = selector.removeEnabled = False
            selector.noneEnabled = True
            selector.setMRMLScene(slicer.mrmlScene)
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtons)
            form.insertRow(len(self.channelSelectors), prompts[len(self.channelSelectors)], selector)
            self.channelSelectors.append(selector)
        self.ui.inputVolumeLabel.text = prompts[0]
        for selector, prompt in zip(self.channelSelectors[1:], prompts[1:]):
            form.labelForField(selector).text = prompt

    def inputVolumes(self) -> list:
        return [selector.currentNode() for selector in self.channelSelectors]

    def onCpu(self) -> bool:
        device = self.ui.deviceSelector.currentData or "auto"
        return device == "cpu" or (device in ("auto", "cuda") and self.engine.modelList.cuda is False)

    def updateHints(self, *unused) -> None:
        choice, volume, tta = self.currentModel(), self.ui.inputVolumeSelector.currentNode(), self.ui.ttaCheckBox.checked
        hint = time_hint(choice, self.ui.deviceSelector.currentData or "auto", tta, self.engine.modelList.cuda)
        if self.onCpu() and choice is not None and choice.cpu_s is None and choice.path and volume is not None:
            try:  # no catalog timing: estimate from this input's tiles and this computer's measured rate
                tiles, passes = self.logic.cpuWork(volume, Path(choice.path), tta and not self.ui.fastCheckBox.checked)
                hint = cpu_estimate_text(tiles, passes, self.preferences.cpuRate(choice.id))
            except (ValueError, RuntimeError, AttributeError) as e:  # an unreadable bundle: the run says why
                logger.info("no CPU estimate: %s", e)
        self.ui.deviceHintLabel.text = hint

    def updateButtons(self, *unused) -> None:
        self.ui.improveModelButton.enabled = self.run is None and self.improvableResult() is not None
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
        volumes = self.inputVolumes()
        self.ui.applyButton.enabled = choice is not None and all(v is not None for v in volumes)
        if choice is None:
            self.ui.applyButton.toolTip = "Select or import a model."
        elif any(v is None for v in volumes):
            self.ui.applyButton.toolTip = "Select an input volume for each of the model's inputs."
        elif not choice.downloaded:
            self.ui.applyButton.toolTip = "Download the model (after one confirmation), then run it."
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
            choice = self.currentModel()
            if choice is not None and not choice.downloaded:
                self.downloadThenSegment(choice)
                return
            self.logic.saveOptions(options)
            self.preferences.save(options)
            run = self.logic.start(self.inputVolumes(), options, self.ui.outputSegmentationSelector.currentNode())
            self.runModelId, self.runPasses = choice.id, 0
            if self.onCpu() and choice.path:
                tta = options.tta and not options.fast
                self.runPasses = self.logic.cpuWork(self.inputVolumes()[0], Path(choice.path), tta)[1]
        except InstallError as e:
            slicer.util.errorDisplay(str(e), detailedText=e.details)
            return
        except (RuntimeError, ValueError) as e:  # EngineError, a process that cannot start, bad paths
            slicer.util.errorDisplay(str(e))
            return
        self.begin(run, "Cancel", self.ui.applyButton)

    def downloadThenSegment(self, choice) -> None:
        """First Segment with a model not downloaded yet: one question, then download and segment."""
        from mednextv2.disk import format_size

        size = f" ({format_size(choice.size_bytes)})" if choice.size_bytes else ""
        if not slicer.util.confirmOkCancelDisplay(f"'{choice.title}'{size} is not downloaded yet. Download it now "
                                                  "and then segment?", windowTitle="MedNeXtV2: download model"):
            return
        self.segmentAfterDownload = True
        self.startModelAction("download", choice.id, "Cancel download", self.ui.applyButton)

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
        box = qt.QMessageBox(qt.QMessageBox.Question, "Import model", "Import a model from a folder (a bundle, or an "
                             "nnU-Net v1 or v2 trainer folder or a folder above it) or from a zipped bundle?", qt.QMessageBox.Cancel,
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

    def improvableResult(self):
        """The last run's (volume, segmentation, model id) while both nodes are still in the scene."""
        if self.lastResult is None:
            return None
        volume, segmentation, modelId = self.lastResult
        if any(slicer.mrmlScene.GetNodeByID(node.GetID() or "") is not node for node in (volume, segmentation)):
            return None
        return self.lastResult

    def onImproveModel(self) -> None:
        """The result, as the user corrected it, becomes a training case for the model that made it:
        the Train module opens with this volume and segmentation as a case and the model as its base."""
        result = self.improvableResult()
        if result is None:
            self.updateButtons()
            return
        volume, segmentation, modelId = result
        slicer.util.selectModule("MedNeXtV2Train")
        slicer.util.getModuleWidget("MedNeXtV2Train").improveModel(volume, segmentation, modelId)

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
        """Ask the engine to stop and return: the timer sees it go (and escalates if it must)."""
        self.segmentAfterDownload = False
        self.logic.cancel(self.run)
        if self.cancelButton is not None:
            self.cancelButton.enabled = False
        self.ui.statusLabel.text = "Cancelling: the engine stops at its next step..."

    def onTimer(self) -> None:
        if not self.logic.poll(self.run, self.onProgress, self.appendLog):
            return
        self.timer.stop()
        run, elapsed = self.run, format_duration(self.run.process.elapsed_s)
        try:
            node = self.logic.finish(run)
        except EngineError as e:
            self.segmentAfterDownload = False
            if run.process.cancelled:
                self.end("Cancelled.")
                return
            self.end(f"Failed after {elapsed}.")
            slicer.util.errorDisplay(str(e), detailedText=e.stderrTail or "\n".join(run.log[-40:]))
            return
        if run.kind == "segment":
            # The selector stays as it was: a second run must not overwrite this result unasked.
            self.ui.show3DButton.setSegmentationNode(node)
            self.lastResult = (run.volumeNode, node, self.runModelId)
            self.showResultDetails(run)
            self.end(f"Done in {elapsed}: {node.GetSegmentation().GetNumberOfSegments()} segments in '{node.GetName()}'.")
        else:
            # finish() had the engine client read the list again: onModelList shows it, then
            # segments when this download came from Segment.
            self.end(f"Model {run.kind} finished in {elapsed}.")

    # -- the result in numbers, and where the model is unsure ---------------------------------------
    def showResultDetails(self, run: EngineRun) -> None:
        self.statistics = run.statistics
        fill_table(self.ui.statisticsTable, run.statistics, qt.QTableWidgetItem)
        self.ui.copyStatisticsButton.enabled = bool(run.statistics)
        self.ui.statisticsHintLabel.text = (f"No statistics: {run.statisticsProblem}" if run.statisticsProblem
                                            else "More measures: the Segment Statistics module.")
        self.uncertaintyNode, self.unsureTour = run.uncertaintyNode, None
        if run.uncertaintyNode is not None:
            threshold = self.ui.unsureThresholdSlider.value
            self.logic.setUncertaintyThreshold(run.uncertaintyNode, threshold)
            self.unsureTour = self.logic.unsureRegionTour(run.uncertaintyNode, threshold)
        self.showUnsureRegions()

    def currentUncertaintyNode(self):
        """The last run's map while it is still in the scene."""
        node = self.uncertaintyNode
        if node is None or slicer.mrmlScene.GetNodeByID(node.GetID() or "") is not node:
            return None
        return node

    def showUnsureRegions(self, text: str = "") -> None:
        tour = self.unsureTour if self.currentUncertaintyNode() is not None else None
        self.ui.nextUnsureRegionButton.enabled = tour is not None
        if tour is None:
            self.ui.unsureRegionLabel.text = text or "Segment with Show uncertainty to find where the model is unsure."
            return
        self.ui.unsureRegionLabel.text = text or summary(len(tour.regions), tour.remaining(), tour.threshold)

    def onNextUnsureRegion(self) -> None:
        node = self.currentUncertaintyNode()
        if node is None or self.unsureTour is None:
            self.showUnsureRegions()
            return
        region = self.unsureTour.next()
        if region is None:
            self.showUnsureRegions(f"No unsure region left above {self.unsureTour.threshold:.2f}: every one was "
                                   "visited. Lower the threshold to see less certain-looking ones.")
            return
        r, a, s = self.logic.jumpToRegion(node, region)
        self.showUnsureRegions(f"Unsure region of {region.voxels} voxels at R {r:.1f}, A {a:.1f}, S {s:.1f} mm; "
                               f"{self.unsureTour.remaining()} of {len(self.unsureTour.regions)} left.")

    def onUnsureThresholdChanged(self, value: float) -> None:
        node = self.currentUncertaintyNode()
        if node is None or self.unsureTour is None:
            return
        self.logic.setUncertaintyThreshold(node, value)
        self.unsureTour.set_threshold(value)  # one labelling (0.1 to 0.2 s on a 1 mm brain grid)
        self.showUnsureRegions()

    def onCopyStatistics(self) -> None:
        if self.statistics:
            qt.QApplication.clipboard().setText(table_text(self.statistics))
            self.ui.statusLabel.text = f"Copied {len(self.statistics)} row(s) as tab-separated text."

    def end(self, status: str) -> None:
        self.run = None
        self.ui.statusLabel.text = status
        self.ui.progressBar.setFormat(status)
        self.appendLog(status)
        self.updateButtons()

    def onProgress(self, event: ProgressEvent) -> None:
        if self.runPasses:  # a CPU segmentation: keep the engine's own seconds per pass for next time
            rate = seconds_per_pass(event, self.runPasses)
            if rate is not None:
                self.preferences.setCpuRate(self.runModelId, rate)
        self.ui.progressBar.setValue(event.percent)
        self.ui.progressBar.setFormat(format_progress(event))

    def appendLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)
