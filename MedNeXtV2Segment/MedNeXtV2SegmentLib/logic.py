"""Segmentation logic: export the volume, run the engine as a child process, load the result.

Works without the GUI: `MedNeXtV2SegmentLogic().segment(volumeNode, "lung-tumor-ct")` blocks
(keeping Slicer's event loop alive) and returns the segmentation node. The panel uses the
non-blocking half: `start()`, then `poll()` from a timer, then `finish()`; `cancel()` at any time.
The logic never opens dialogs: it raises `EngineError`, and the widget decides what to show.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from .command import build_segment_command, device_probe_command, engine_threads
from .engine_client import EngineClient, EngineError, EngineRunner, check_exit, shared_client
from .labels import LabelEntry, load_bundle, selected_label_table
from .models import ModelChoice, models_by_id
from .parameters import SegmentChoices
from .paths import RunPaths, make_run_paths, output_segmentation_name
from .process import ExitCode
from .timing import passes_per_tile, tile_count
from .progress import ProgressEvent, parse_progress_line
from .statistics import SegmentStatistics, StatisticsError, read_statistics
from .unsure_regions import DEFAULT_THRESHOLD, UnsureRegion, UnsureRegionTour

logger = logging.getLogger(__name__)

OPTIONS_PARAMETER = "SegmentOptions"  # key kept: scenes saved by earlier versions
# Segmentation stops at the next tile after a stop request; a slow CPU tile can take this long.
CANCEL_GRACE_S = 15.0
# Slicer's built-in "Iron" table (vtkMRMLColorLogic: "vtkMRMLColorTableNode" + type name, made in
# every Slicer without colour files): red at 0 to yellow at 1, a hue that stands out on grey MR/CT.
UNCERTAINTY_COLOR_NODE_ID = "vtkMRMLColorTableNodeIron"
UNCERTAINTY_OPACITY = 0.5  # the foreground layer's: the anatomy stays readable under the overlay


@dataclass
class EngineRun:
    """One engine process (segment, download or import) and what is needed to finish it."""

    process: EngineRunner
    kind: str  # "segment" | "download" | "import" | "probe"
    paths: Optional[RunPaths] = None
    volumeNode: object = None
    outputNode: object = None
    labels: Tuple[LabelEntry, ...] = ()
    title: str = ""
    lastProgress: Optional[ProgressEvent] = None
    log: List[str] = field(default_factory=list)
    stdout: List[str] = field(default_factory=list)  # what the GPU check prints
    uncertainty: bool = False  # the engine was asked for the map
    uncertaintyNode: object = None  # set by finish(): the loaded map
    statistics: List[SegmentStatistics] = field(default_factory=list)  # set by finish()
    statisticsProblem: str = ""  # why the statistics could not be read (the result is loaded all the same)


class MedNeXtV2SegmentLogic(ScriptedLoadableModuleLogic):
    def __init__(self, engine: Optional[EngineClient] = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.engine = engine or shared_client()  # shared with the Train module

    @property
    def installLogic(self):
        return self.engine.installLogic

    @property
    def python(self) -> str:
        return self.engine.python

    # -- settings --------------------------------------------------------------------------
    def loadOptions(self) -> SegmentChoices:
        return SegmentChoices.from_json(self.getParameterNode().GetParameter(OPTIONS_PARAMETER))

    def saveOptions(self, options: SegmentChoices) -> None:
        self.getParameterNode().SetParameter(OPTIONS_PARAMETER, options.to_json())

    # -- models (the engine client's list, shared with the Train module) ---------------------
    def startDeviceProbe(self) -> EngineRun:
        """Does the engine's torch see a CUDA GPU? `finish()` stores the answer in the model list's `cuda`."""
        return EngineRun(self.engine.start(device_probe_command(self.python)), kind="probe", title="GPU check")

    def refreshModels(self) -> List[ModelChoice]:
        """Blocking refresh, for scripts and the self-test (events keep flowing); panels call
        `engine.modelList.load()` and listen for the list."""
        errors: List[Exception] = []
        self.engine.modelList.addListener(errors.append)
        try:
            self.engine.modelList.load(force=True)
            while not self.engine.modelList.poll():
                slicer.app.processEvents()
                time.sleep(0.05)
        finally:
            self.engine.modelList.removeListener(errors.append)
        if errors and errors[-1] is not None:
            raise errors[-1]
        return self.engine.modelList.models

    def startModelAction(self, action: str, argument: str) -> EngineRun:
        """Download a catalog model (`action='download'`) or import a bundle / nnU-Net folder ('import')."""
        return EngineRun(self.engine.startModelAction(action, argument), kind=action, title=argument)

    def bundlePath(self, modelIdOrPath: str) -> Path:
        """Local bundle for a catalog id (downloaded) or a path given directly."""
        if Path(modelIdOrPath).exists():
            return Path(modelIdOrPath).resolve()  # the engine runs in its own folder
        choice = self.engine.modelList.model(modelIdOrPath) or models_by_id(self.refreshModels()).get(modelIdOrPath)
        if choice is None:
            raise EngineError(f"Model '{modelIdOrPath}' is not in the catalog. Pick one from the list or import it.")
        if not choice.path:
            raise EngineError(f"Model '{choice.title}' is not downloaded yet. Press Download first.")
        return Path(choice.path)

    # -- segmentation: non-blocking --------------------------------------------------------
    def start(self, volumeNodes, options: SegmentChoices, outputNode=None) -> EngineRun:
        self.installLogic.require()
        volumeNodes = list(volumeNodes) if isinstance(volumeNodes, (list, tuple)) else [volumeNodes]
        if not volumeNodes or any(v is None for v in volumeNodes):
            raise EngineError("Select an input volume.")
        options = options.validated()
        bundlePath = self.bundlePath(options.model)
        bundle = load_bundle(bundlePath)
        if len(bundle.channels) != len(volumeNodes):
            names = ", ".join(f"{name} ({modality})" for name, modality in bundle.channels)
            raise EngineError(f"Model '{bundle.title}' needs {len(bundle.channels)} input volume(s): {names}; "
                              f"{len(volumeNodes)} selected.")
        labels = selected_label_table(bundle.labels, options.structures)
        paths = make_run_paths(len(volumeNodes), temp_root=slicer.app.temporaryPath)
        try:
            for volumeNode, path in zip(volumeNodes, paths.inputs):
                self._exportVolume(volumeNode, path)
            args = build_segment_command(self.python, paths.inputs, paths.output,
                                         options.with_changes(model=str(bundlePath)), threads=engine_threads(),
                                         uncertainty=paths.uncertainty, statistics=paths.statistics)
            process = self.engine.start(args)
        except Exception:
            paths.remove()
            raise
        return EngineRun(process, "segment", paths, volumeNodes[0], outputNode, labels, title=bundle.title,
                         uncertainty=options.uncertainty)

    def poll(self, run: EngineRun, onProgress=None, onLog=None) -> bool:
        """Forward new output; True once the process has finished and all output is read."""
        finished = run.process.finished  # read before draining, so no line is left behind
        for line in run.process.poll():
            event = parse_progress_line(line.text) if line.stream == "stdout" else None
            if event is None and line.stream == "stdout" and run.kind == "probe":
                run.stdout.append(line.text)
            elif event is not None:
                run.lastProgress = event
                if onProgress:
                    onProgress(event)
            else:
                run.log.append(line.text)
                if onLog:
                    onLog(line.text)
        return finished

    def cancel(self, run: EngineRun) -> None:
        """Ask the engine to stop; returns at once. Keep polling: `finish()` then raises
        EngineError('Cancelled.') and removes the run's files once the engine has let go of them."""
        run.process.cancel(grace_s=CANCEL_GRACE_S)

    def finish(self, run: EngineRun):
        """Load the result (segment runs) or raise EngineError with the engine's own words."""
        code = run.process.returncode
        if run.kind == "probe":
            self.engine.modelList.cuda = code == ExitCode.OK and '"cuda": true' in "".join(run.stdout)
            return self.engine.modelList.cuda
        if run.kind != "segment":
            return self.engine.finishModelAction(run.process)  # every panel reads the changed list again
        if code == ExitCode.CANCELLED:
            run.paths.remove()
        check_exit(run.process, run.paths.work_dir)
        try:
            node = self._loadResult(run)
        except Exception as e:
            raise EngineError(f"The result could not be loaded: {e}\nFiles are kept in {run.paths.work_dir}",
                              code, "\n".join(run.process.stderr_tail), run.paths.work_dir) from e
        run.paths.remove()
        return node

    # -- segmentation: blocking, for scripts and the self-test -------------------------------
    def segment(self, volumeNode, modelId: str, outputNode=None, onProgress=None, onLog=None, **options):
        """Segment and return the segmentation node; options as in SegmentChoices (tta, fast, ...)."""
        if not Path(modelId).exists():
            self.refreshModels()
            choice = self.engine.modelList.model(modelId)
            if choice is not None and not choice.path:
                self._wait(self.startModelAction("download", modelId), onProgress, onLog)
                self.refreshModels()
        run = self.start(volumeNode, SegmentChoices(model=modelId).with_changes(**options), outputNode)
        return self._wait(run, onProgress, onLog)

    def _wait(self, run: EngineRun, onProgress, onLog):
        while not self.poll(run, onProgress, onLog):
            slicer.app.processEvents()
            time.sleep(0.05)
        return self.finish(run)

    # -- scene I/O ---------------------------------------------------------------------------
    @staticmethod
    def _exportVolume(volumeNode, path: Path) -> None:
        # exportNode writes through a temporary storage node: the scene's own file names stay as
        # they are. world=False keeps the node's local grid; a parent transform is re-applied
        # to the result in _loadResult, so a non-linear transform never resamples the input.
        if not slicer.util.exportNode(volumeNode, str(path), {"useCompression": 0}, world=False):
            raise EngineError(f"Could not write '{volumeNode.GetName()}' to {path} (see the application log).")

    def _loadResult(self, run: EngineRun):
        if not run.paths.output.exists():
            raise EngineError(f"the engine reported success but wrote no {run.paths.output.name}")
        volumeNode = run.volumeNode
        loaded = slicer.util.loadSegmentation(str(run.paths.output),
                                              {"name": output_segmentation_name(volumeNode.GetName(), run.title)})
        if not loaded:
            raise EngineError(f"Slicer could not read {run.paths.output}")
        node = loaded
        if run.outputNode is not None and run.outputNode != loaded:
            run.outputNode.GetSegmentation().DeepCopy(loaded.GetSegmentation())
            self._removeWithParts(loaded)
            node = run.outputNode
        self.forgetRunFile(node, run.paths.work_dir)
        # The file it was read from is deleted with the run folder: without this, Slicer's Save
        # dialog lists the result as "Not Modified" and leaves it unticked.
        node.StorableModified()
        node.CreateDefaultDisplayNodes()
        self.applyLabels(node, run.labels)
        node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        self._placeInStudy(node, volumeNode)
        if run.uncertainty:
            run.uncertaintyNode = self.loadUncertainty(run.paths.uncertainty, run.paths.work_dir, volumeNode, node)
        try:
            run.statistics = read_statistics(run.paths.statistics)
        except StatisticsError as e:  # numbers are a bonus: the segmentation is loaded all the same
            run.statisticsProblem = str(e)
            logger.warning("no statistics: %s", e)
        return node

    # -- uncertainty ---------------------------------------------------------------------------
    def loadUncertainty(self, path: Path, runFolder: Path, volumeNode, segmentationNode):
        """The engine's map (on `volumeNode`'s grid) as a scalar volume under the result in the Data
        module, shown over the scan; `runFolder` is deleted after the run (see forgetRunFile)."""
        if not path.exists():
            raise EngineError(f"the engine reported success but wrote no {path.name}")
        try:
            node = slicer.util.loadVolume(str(path), {"name": f"{segmentationNode.GetName()} uncertainty",
                                                      "singleFile": True, "show": False})
        except RuntimeError as e:  # slicer.util raises on failure since 5.0; older versions return None
            raise EngineError(f"Slicer could not read {path}: {e}") from None
        if not node:
            raise EngineError(f"Slicer could not read {path}")
        self.forgetRunFile(node, runFolder)
        node.StorableModified()
        node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        mapItem, resultItem = shNode.GetItemByDataNode(node), shNode.GetItemByDataNode(segmentationNode)
        if mapItem and resultItem:
            shNode.SetItemParent(mapItem, resultItem)
        self.showUncertainty(node, DEFAULT_THRESHOLD)
        return node

    @staticmethod
    def showUncertainty(mapNode, threshold: float) -> None:
        """Colour table, window/level fixed to the map's [0, 1] (not the data's range: a confident
        result must not look unsure), voxels at or below `threshold` transparent, and the map as the
        slice views' foreground layer."""
        if mapNode.GetDisplayNode() is None:
            mapNode.CreateDefaultDisplayNodes()
        display = mapNode.GetDisplayNode()
        display.SetAndObserveColorNodeID(UNCERTAINTY_COLOR_NODE_ID)
        display.SetAutoWindowLevel(0)
        display.SetWindowLevelMinMax(0.0, 1.0)
        MedNeXtV2SegmentLogic.setUncertaintyThreshold(mapNode, threshold)
        slicer.util.setSliceViewerLayers(foreground=mapNode, foregroundOpacity=UNCERTAINTY_OPACITY)

    @staticmethod
    def setUncertaintyThreshold(mapNode, threshold: float) -> None:
        display = mapNode.GetDisplayNode()
        display.SetAutoThreshold(0)
        display.SetApplyThreshold(1)
        display.SetLowerThreshold(float(threshold))
        display.SetUpperThreshold(1.0)

    @staticmethod
    def unsureRegionTour(mapNode, threshold: float = DEFAULT_THRESHOLD) -> UnsureRegionTour:
        """The map's regions above `threshold` (labelled now, once: unsure_regions.py)."""
        import numpy as np

        matrix = vtk.vtkMatrix4x4()
        mapNode.GetIJKToRASMatrix(matrix)
        ijkToRas = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        return UnsureRegionTour(np.array(slicer.util.arrayFromVolume(mapNode)), ijkToRas, threshold)

    @staticmethod
    def jumpToRegion(mapNode, region: UnsureRegion) -> Tuple[float, float, float]:
        """Centre every slice view on the region; returns the point in world RAS (the map's parent
        transform applied, as the slice views show the map)."""
        point = region.target_ras
        parent = mapNode.GetParentTransformNode()
        if parent is not None:
            toWorld = vtk.vtkGeneralTransform()
            slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(parent, None, toWorld)
            point = toWorld.TransformPoint(point)
        slicer.vtkMRMLSliceNode.JumpAllSlices(mapNode.GetScene(), *point, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
        return tuple(point)

    @staticmethod
    def forgetRunFile(node, runFolder: Path) -> None:
        """Drop a loaded node's storage node when its file lies in a run folder (deleted after the run).

        Slicer's Save dialog keeps the directory of a node's existing file name and the IO manager
        re-creates missing folders, so the result would be saved into the temp folder, and the saved
        scene would lose it at the next temp cleanup. Without a storage node the dialog makes a
        default one in the folder the user saves to."""
        storage = node.GetStorageNode()
        fileName = storage.GetFileName() if storage is not None else None
        if not fileName:
            return
        folder, file = Path(runFolder).resolve(), Path(fileName).resolve()
        if folder != file and folder not in file.parents:
            return
        node.SetAndObserveStorageNodeID(None)
        if storage.GetScene() is not None:
            storage.GetScene().RemoveNode(storage)

    @staticmethod
    def _removeWithParts(node) -> None:
        """RemoveNode leaves a node's display and storage nodes in the scene (MRML core does not
        cascade), so a discarded result removes them itself."""
        parts = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())] + [node.GetStorageNode()]
        slicer.mrmlScene.RemoveNode(node)
        for part in parts:
            if part is not None:
                slicer.mrmlScene.RemoveNode(part)

    @staticmethod
    def applyLabels(segmentationNode, labels: Sequence[LabelEntry]) -> None:
        """Names, colours and terminology from the bundle, matched by label value, then by name."""
        byValue = {e.value: e for e in labels}
        byName = {e.name: e for e in labels}
        segmentation = segmentationNode.GetSegmentation()
        for i in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(i)
            entry = byValue.get(segment.GetLabelValue()) or byName.get(segment.GetName())
            if entry is None:
                logger.warning("Segment '%s' is not in the model's label table", segment.GetName())
                continue
            segment.SetName(entry.name)
            segment.SetColor(*entry.color_float)
            if entry.terminology:
                segment.SetTag(segment.GetTerminologyEntryTagName(), entry.terminology)

    @staticmethod
    def cpuWork(volumeNode, bundlePath: Path, tta: bool) -> Tuple[int, int]:
        """(tiles, network passes per tile) of a run on this volume, for the CPU estimate (timing.py)."""
        bundle = load_bundle(bundlePath)
        inference = bundle.inference
        tiles = tile_count(volumeNode.GetImageData().GetDimensions(), volumeNode.GetSpacing(),
                           bundle.preprocessing.target_spacing, inference.patch_size, inference.step)
        return tiles, passes_per_tile(inference.mirror_axes_per_fold(len(bundle.weights)), tta)

    @staticmethod
    def volumeModality(volumeNode) -> str:
        """'CT', 'MR', ... from the DICOM series the volume was loaded from (the attribute Slicer's
        DICOM plugins set on its subject-hierarchy item); '' for a volume not loaded from DICOM."""
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volumeNode.GetScene())
        item = shNode.GetItemByDataNode(volumeNode) if shNode else 0
        if not item:
            return ""
        name = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMSeriesModalityAttributeName()
        return (shNode.GetItemAttribute(item, name) or "").strip().upper()

    @staticmethod
    def _placeInStudy(node, volumeNode) -> None:
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        volumeItem = shNode.GetItemByDataNode(volumeNode)
        segmentationItem = shNode.GetItemByDataNode(node)
        if volumeItem and segmentationItem:
            shNode.SetItemParent(segmentationItem, shNode.GetItemParent(volumeItem))
