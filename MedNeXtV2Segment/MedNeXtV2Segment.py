"""MedNeXtV2Segment: segment a CT or MR volume with a MedNeXt-v2 model, without freezing Slicer.

This file is the shell Slicer looks for (Module, Widget, Logic and Test classes named after the
module). The work lives in MedNeXtV2SegmentLib: widget.py (panel), logic.py (export, run, load),
process.py (child process + cancel), install.py (dependencies), and plain helpers.
"""
import logging

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from MedNeXtV2SegmentLib.command import use_shipped_engine

use_shipped_engine()  # before anything imports mednextv2: Slicer appends module paths to sys.path

from MedNeXtV2SegmentLib.logic import MedNeXtV2SegmentLogic  # noqa: E402,F401  (Slicer looks it up by name)
from MedNeXtV2SegmentLib.selftest import MedNeXtV2SegmentTest  # noqa: E402,F401  (run by slicer_add_python_unittest)


class MedNeXtV2Segment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedNeXtV2 Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "SubjectHierarchy"]
        self.parent.contributors = ["MedNeXtV2 contributors"]
        self.parent.helpText = """
Segment a CT or MR volume with a MedNeXt-v2 model: pick the volume and a model (download or import it
once), press <b>Segment</b>. The model runs as a separate process, so Slicer stays responsive, and
<b>Cancel</b> stops it at its next step. Results keep the input's exact geometry, with the model's segment
names, colours and terminology. See the
<a href="https://github.com/mednextv2/SlicerMedNeXtV2#segment">documentation</a>.
"""
        self.parent.acknowledgementText = """
MedNeXt: Roy et al., MICCAI 2023; MedNeXt-v2 by the same authors. Slicer integration patterns learned from
SlicerNNUNet, SlicerMONAIAuto3DSeg and SlicerTotalSegmentator.
"""


class MedNeXtV2SegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.panel = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from MedNeXtV2SegmentLib.widget import SegmentPanel

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedNeXtV2Segment.ui"))
        self.layout.addWidget(uiWidget)
        self.panel = SegmentPanel(uiWidget)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)

    def enter(self):
        # The cached list: entering never waits for the engine (Refresh reads it again).
        if self.panel is not None and self.panel.run is None:
            self.panel.refreshModels()

    def onSceneStartClose(self, caller, event):
        # Closing the scene removes the nodes a running segmentation would write into.
        if self.panel is not None and self.panel.run is not None:
            logging.info("Scene closing: cancelling the running MedNeXtV2 job")
            self.panel.cancel()

    def cleanup(self):
        self.removeObservers()
        if self.panel is not None:
            self.panel.cleanup()
