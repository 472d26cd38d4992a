"""MedNeXtV2Train: fine-tune a MedNeXt-v2 model on cases labeled in Slicer, locally, with live progress.

This file is the shell Slicer looks for (Module, Widget, Logic and Test classes named after the
module). The work lives in MedNeXtV2TrainLib: widget.py and run_pages.py (the wizard), logic.py (export,
run, register), scene_cases.py (the only MRML reader), and plain-Python parts tested outside Slicer.
"""
import logging

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from MedNeXtV2SegmentLib.command import use_shipped_engine

use_shipped_engine()  # before anything imports mednextv2: Slicer appends module paths to sys.path

from MedNeXtV2TrainLib.logic import MedNeXtV2TrainLogic  # noqa: E402,F401  (Slicer looks it up by name)
from MedNeXtV2TrainLib.selftest import MedNeXtV2TrainTest  # noqa: E402,F401  (run by slicer_add_python_unittest)


class MedNeXtV2Train(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedNeXtV2 Train"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "SubjectHierarchy", "MedNeXtV2Segment"]
        self.parent.contributors = ["MedNeXtV2 contributors"]
        self.parent.helpText = """
Fine-tune a MedNeXt-v2 model on volumes you have segmented in Slicer, on this computer.
A wizard pairs each volume with its segmentation, maps your segment names to the base model's labels,
and runs training as a separate process with live loss and Dice curves. <b>Cancel</b> keeps a
checkpoint, and an interrupted run can be resumed, even after restarting Slicer. The new model is
registered in the model list of MedNeXtV2 Segment. See the
<a href="https://github.com/mednextv2/SlicerMedNeXtV2#fine-tune">documentation</a>.
"""
        self.parent.acknowledgementText = """
MedNeXt: Roy et al., MICCAI 2023; MedNeXt-v2 by the same authors. Training recipe after nnU-Net
(Isensee et al., Nature Methods 2021).
"""


class MedNeXtV2TrainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.wizard = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from MedNeXtV2TrainLib.widget import TrainWizard

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedNeXtV2Train.ui"))
        self.layout.addWidget(uiWidget)
        self.wizard = TrainWizard(uiWidget)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)

    def enter(self):
        # Volumes or segmentations may have been added since the panel was last shown: merged into
        # the case table, whose manual rows and unticked cases stay.
        if self.wizard is not None and not self.wizard.busy and not self.wizard.fromFolder():
            self.wizard.fillCasesFromScene()
            self.wizard.refreshResumable()
            self.wizard.refreshModels()

    def improveModel(self, volumeNode, segmentationNode, baseModelId: str) -> None:
        """Public entry of the Segment panel's "Improve this model": this volume and its (corrected)
        segmentation as a training case, `baseModelId` as the base model (TrainWizard.improveModel)."""
        self.wizard.improveModel(volumeNode, segmentationNode, baseModelId)

    def onSceneChanged(self, caller, event):
        self.enter()

    def onSceneStartClose(self, caller, event):
        # Closing the scene removes the nodes that cases being checked or written are read from.
        if self.wizard is not None:
            self.wizard.cancelCaseWork()

    def cleanup(self):
        self.removeObservers()
        if self.wizard is not None:
            if self.wizard.busy:
                logging.info("MedNeXtV2Train closing: the running training saves a checkpoint and stops")
            self.wizard.cleanup()
