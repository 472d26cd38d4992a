"""Real Slicer core for the module tests, plus stand-ins for only what the `slicer-core` wheel lacks.

The wheel (PyPI `slicer-core`, a test requirement: a missing wheel is an ImportError, never a
skip) gives the real `slicer` package: MRML nodes, `slicer.util`, and the Volumes, Colors,
Segmentations, SubjectHierarchy and Terminologies logics. It has no application object, no
`slicer.mrmlScene`, no `slicer.ScriptedLoadableModule` (Slicer's Qt-based Python layer) and no
`sitkUtils`. `install()` adds exactly these, and nothing that fakes MRML:

- `slicer.mrmlScene`: a real `vtkMRMLScene` with a data IO manager, as the application sets it up;
- `slicer.app` (`App`): temporary path, processEvents, testing mode, and `coreIOManager()`,
  the four calls `slicer.util.exportNode` / `loadNodeFromFile` make on qSlicerCoreIOManager,
  answered with Slicer's real storage nodes and module logics (see `CoreIOManager`); and the
  one thing Slicer's Qt subject hierarchy plugin logic does for every module: new data nodes
  get a subject hierarchy item;
- `slicer.modules.volumes / colors / segmentations`: the Qt module objects, of which slicer.util
  only calls `logic()`: the real logics, bound to the scene;
- `slicer.ScriptedLoadableModule`: the base classes. The logic's parameter node is a real
  singleton `vtkMRMLScriptedModuleNode` made as Slicer's base class makes it; the widget base
  is inert (the Qt panel is not tested here); the test base is `unittest.TestCase` whose
  `delayDisplay` is the real `slicer.util.delayDisplay`;
- `sitkUtils.PullVolumeFromSlicer` (Slicer's Base/Python, not in the wheel): voxels and IJK-to-RAS
  of the real node, turned into a SimpleITK image as Slicer's current sitkUtils does.

`install()` is idempotent for the modules (imported module code keeps working across tests) and
gives a fresh scene each call; `uninstall()` clears the scene and removes the stand-ins.
"""
from __future__ import annotations

import sys
import tempfile
import types
import unittest
from pathlib import Path
from typing import Optional

import slicer  # the slicer-core wheel: tests that use this module fail without it
import slicer.util  # noqa: F401  (real slicer.util)
import vtk

_SEGMENTATION_EXTENSIONS = (".seg.nrrd", ".seg.nhdr", ".seg.vtm")


class CoreIOManager:
    """The calls slicer.util makes on qSlicerCoreIOManager, done the way Slicer does them.

    Load: the readers Slicer registers for the two file types the modules load (qSlicerSegmentationsReader
    -> vtkSlicerSegmentationsModuleLogic.LoadSegmentationFromFile; qSlicerVolumesReader ->
    vtkSlicerVolumesLogic.AddArchetypeVolume). Export: as qSlicerCoreIOManager::exportNodes, a copy
    of the node in a temporary scene written by its default storage node; hardening transforms
    (world=True) is not offered, the modules never ask for it.
    """

    def __init__(self, app: "App") -> None:
        self.app = app

    @staticmethod
    def fileType(filename) -> str:
        return "SegmentationFile" if str(filename).lower().endswith(_SEGMENTATION_EXTENSIONS) else "VolumeFile"

    def loadNodes(self, fileType, properties, loadedNodes, userMessages=None) -> bool:
        fileName, name = str(properties["fileName"]), properties.get("name")
        if fileType == "SegmentationFile":
            colorNode = slicer.mrmlScene.GetNodeByID(properties["colorNodeID"]) if "colorNodeID" in properties else None
            node = self.app.segmentationsLogic.LoadSegmentationFromFile(
                fileName, bool(properties.get("autoOpacities", True)), name, colorNode, userMessages)
        elif fileType == "VolumeFile":
            node = self.app.volumesLogic.AddArchetypeVolume(fileName, name or Path(fileName).name.split(".")[0])
        else:
            raise NotImplementedError(f"the test stand-in loads no '{fileType}'")
        if node is None:
            return False
        loadedNodes.AddItem(node)
        return True

    @staticmethod
    def _temporaryScene() -> "slicer.vtkMRMLScene":
        scene = slicer.vtkMRMLScene()
        scene.SetDataIOManager(slicer.mrmlScene.GetDataIOManager())
        return scene

    def fileWriterExtensions(self, node):
        scene = self._temporaryScene()
        storage = node.CreateDefaultStorageNode()
        scene.AddNode(storage)
        types_ = storage.GetSupportedWriteFileTypes()
        return [types_.GetValue(i) for i in range(types_.GetNumberOfValues())]

    def extractKnownExtension(self, filename, node) -> str:
        """The longest writer extension the file name ends with, as qSlicerCoreIOManager does."""
        known = [slicer.vtkDataFileFormatHelper.GetFileExtensionFromFormatString(f) for f in self.fileWriterExtensions(node)]
        matching = [e for e in known if e and str(filename).endswith(e)]
        return max(matching, key=len) if matching else ""

    def exportNodes(self, nodeIDs, fileNames, properties, hardenTransforms, userMessages=None) -> bool:
        if hardenTransforms:
            raise NotImplementedError("the test stand-in does not harden transforms (world=True)")
        scene = self._temporaryScene()
        for nodeID, fileName in zip(nodeIDs, fileNames):
            node = slicer.mrmlScene.GetNodeByID(nodeID)
            copy = scene.AddNewNodeByClass(node.GetClassName())
            copy.CopyContent(node, False)
            if not copy.AddDefaultStorageNode():
                return False
            storage = copy.GetStorageNode()
            storage.SetFileName(str(fileName))
            storage.SetUseCompression(int(properties.get("useCompression", 1)))
            if not storage.WriteData(copy):
                return False
        return True


class _LoadableModule:
    """slicer.modules.<name>: Slicer's (Qt) module object; only `logic()` is used outside the GUI."""

    def __init__(self, logic) -> None:
        self._logic = logic

    def logic(self):
        return self._logic


class _CommandOptions:
    testingEnabled = True  # no confirmation dialogs: nobody can click them


class App:
    """slicer.app: what the modules and slicer.util call outside the GUI, with the module logics
    wired to the scene through a real vtkSlicerApplicationLogic, as Slicer's module manager does."""

    applicationName = "Slicer (test stand-in)"

    def __init__(self, temporaryPath: str, scene) -> None:
        self.temporaryPath = str(temporaryPath)
        self.events = 0
        self.applicationLogic = slicer.vtkSlicerApplicationLogic()
        self.applicationLogic.SetMRMLScene(scene)
        self.colorLogic = self._moduleLogic("Colors", slicer.vtkSlicerColorLogic(), scene)
        self.volumesLogic = self._moduleLogic("Volumes", slicer.vtkSlicerVolumesLogic(), scene)
        self.segmentationsLogic = self._moduleLogic("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic(), scene)
        self._coreIOManager = CoreIOManager(self)
        self._nodeAddedObserver = scene.AddObserver(scene.NodeAddedEvent, self._onNodeAdded)

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _onNodeAdded(self, scene, event, node) -> None:
        """A subject hierarchy item for each new data node, under the scene item, as Slicer's
        subject hierarchy plugin logic (Qt) does; not while importing or for hidden nodes."""
        if scene.IsImporting() or node is None or node.GetHideFromEditors() or not node.IsA("vtkMRMLDisplayableNode"):
            return
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        if shNode is not None and not shNode.GetItemByDataNode(node):
            shNode.CreateItem(shNode.GetSceneItemID(), node)

    def _moduleLogic(self, name, logic, scene):
        logic.SetMRMLApplicationLogic(self.applicationLogic)
        logic.SetMRMLScene(scene)
        self.applicationLogic.SetModuleLogic(name, logic)
        return logic

    def processEvents(self) -> None:
        self.events += 1

    def coreIOManager(self) -> CoreIOManager:
        return self._coreIOManager

    @staticmethod
    def commandOptions() -> _CommandOptions:
        return _CommandOptions()

    @staticmethod
    def testingEnabled() -> bool:
        return True


# -- slicer.ScriptedLoadableModule: the base classes ----------------------------------------------
class ScriptedLoadableModule:
    """Module base: Slicer fills `parent` (title, help); nothing of it is used outside the GUI."""

    def __init__(self, parent=None) -> None:
        self.parent = parent
        self.moduleName = type(self).__name__


class ScriptedLoadableModuleWidget:
    """Widget base: the Qt panel is not built here (it needs Slicer's Qt application)."""

    def __init__(self, parent=None) -> None:
        self.parent = parent


class ScriptedLoadableModuleLogic:
    """As Slicer's: one singleton vtkMRMLScriptedModuleNode per module, tagged with its name."""

    def __init__(self, parent=None) -> None:
        self.moduleName = type(self).__name__[:-5] if type(self).__name__.endswith("Logic") else type(self).__name__

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node:
            return node
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        return slicer.mrmlScene.AddNode(node)


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, requestedDelay=None, msec=None):
        slicer.util.delayDisplay(message, 100 if msec is None else msec)  # < 400 ms: processEvents only


def _scripted_module() -> types.ModuleType:
    module = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)
    return module


def PullVolumeFromSlicer(node):
    """sitkUtils.PullVolumeFromSlicer as Slicer's current sitkUtils does it: the node's voxels
    (slicer.util.arrayFromVolume) with its IJK-to-RAS matrix turned into LPS origin, spacing, direction."""
    import numpy as np
    import SimpleITK as sitk

    array = slicer.util.arrayFromVolume(node)
    image = sitk.GetImageFromArray(array, isVector=array.ndim == 4)
    ijkToLPS = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_ras(node)
    spacing = np.array(node.GetSpacing())
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(ijkToLPS[:3, 3].tolist())
    image.SetDirection((ijkToLPS[:3, :3] / spacing[None, :]).ravel().tolist())
    return image


_SCRIPTED = _scripted_module()
_SITK_UTILS = types.ModuleType("sitkUtils")
_SITK_UTILS.PullVolumeFromSlicer = PullVolumeFromSlicer
_STAND_INS = {"slicer.ScriptedLoadableModule": _SCRIPTED, "sitkUtils": _SITK_UTILS}


def install(temporaryPath: Optional[str] = None):
    """Give the real `slicer` package a fresh scene and the stand-ins above; returns `slicer`."""
    temporaryPath = temporaryPath or tempfile.mkdtemp(prefix="slicer-temp-")
    Path(temporaryPath).mkdir(parents=True, exist_ok=True)
    scene = slicer.vtkMRMLScene()
    scene.SetDataIOManager(slicer.vtkDataIOManager())  # lists the ITK writers, as in the application
    slicer.mrmlScene = scene
    slicer.app = App(temporaryPath, scene)
    slicer.modules = types.SimpleNamespace(volumes=_LoadableModule(slicer.app.volumesLogic),
                                           colors=_LoadableModule(slicer.app.colorLogic),
                                           segmentations=_LoadableModule(slicer.app.segmentationsLogic))
    slicer.ScriptedLoadableModule = _SCRIPTED
    sys.modules.update(_STAND_INS)
    return slicer


def uninstall() -> None:
    if getattr(slicer, "mrmlScene", None) is not None:
        slicer.mrmlScene.Clear(1)
    for name in ("app", "modules", "mrmlScene", "ScriptedLoadableModule"):
        if hasattr(slicer, name):
            delattr(slicer, name)
    for name, module in _STAND_INS.items():
        if sys.modules.get(name) is module:
            del sys.modules[name]


def load_volume(path: Path, name: str):
    """A scan read by Slicer's own reader (vtkSlicerVolumesLogic.AddArchetypeVolume)."""
    node = slicer.app.volumesLogic.AddArchetypeVolume(str(path), name)
    if node is None:
        raise RuntimeError(f"Slicer could not read {path}")
    return node


def matrix_as_array(matrix) -> "object":
    import numpy as np

    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_ras(volumeNode):
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return matrix_as_array(matrix)


# -- helpers for the tests on real nodes ------------------------------------------------------------
def export_segment(segmentationNode, segmentId, volumeNode):
    """A segment as Slicer's Segmentations logic exports it onto the volume's grid: bool (k, j, i)."""
    labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segmentId)
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentationNode, ids, labelmap, volumeNode):
            raise RuntimeError(f"Slicer could not export segment {segmentId}")
        return slicer.util.arrayFromVolume(labelmap) > 0
    finally:
        slicer.mrmlScene.RemoveNode(labelmap)


def assert_on_volume_grid(image, volumeNode, what: str) -> None:
    """A SimpleITK image (LPS) lies on the volume node's grid (IJK-to-RAS), voxel for voxel."""
    import numpy as np

    ijkToLPS = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_ras(volumeNode)
    assert image.GetSize() == tuple(volumeNode.GetImageData().GetDimensions()), what
    directions = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())[None, :]
    np.testing.assert_allclose(directions, ijkToLPS[:3, :3], atol=1e-5, err_msg=what)
    np.testing.assert_allclose(image.GetOrigin(), ijkToLPS[:3, 3], atol=1e-4, err_msg=what)


# -- slicer.packaging (Slicer 5.12+): absent from the wheel -----------------------------------------
class Packaging:
    """`slicer.packaging` as in Slicer v5.12.3 (Base/Python/slicer/packaging.py): `pip_check`,
    `pip_ensure` and `pip_install` with its signatures and its decisions, in its order:

    - pip_ensure: only unsatisfied requirements go on; in testing mode (`slicer.app.testingEnabled()`)
      with `skip_in_testing` (default True) it installs nothing and returns None; `prompt_install`
      asks with `slicer.util.confirmOkCancelDisplay` and raises RuntimeError when declined; then
      `pip_install(..., blocking=True, show_progress=show_progress, requester=requester)`.
    - pip_install: in testing mode a plain blocking pip; else, with show_progress and blocking, its
      own modal progress dialog and, when pip fails, its own `slicer.util.errorDisplay` with pip's
      log before raising CalledProcessError(returncode, "pip install").

    `pip(args) -> (returncode, lines)` stands in for the `python -m pip install` child process;
    `installed` (name -> version) is what `importlib.metadata` would report."""

    def __init__(self, pip, installed: dict) -> None:
        self.pip, self.installed = pip, installed
        self.progress_dialogs, self.error_dialogs, self.prompts = [], [], []

    def pip_check(self, req) -> bool:
        from packaging.requirements import Requirement

        reqs = [Requirement(r) if isinstance(r, str) else r for r in (req if isinstance(req, list) else [req])]
        return all(r.name in self.installed and self.installed[r.name] in r.specifier for r in reqs)

    def pip_ensure(self, requirements, constraints=None, skip_packages=None, prompt_install: bool = True,
                   prompt_restart: bool = True, requester=None, skip_in_testing: bool = True,
                   show_progress: bool = True):
        import slicer

        reqs = requirements if isinstance(requirements, list) else str(requirements).split()
        missing = [str(r) for r in reqs if not self.pip_check(str(r))]
        if not missing:
            return None
        if skip_in_testing and slicer.app.testingEnabled():
            return None
        if prompt_install:
            self.prompts.append(missing)
            if not slicer.util.confirmOkCancelDisplay("Python packages need to be installed.", requester,
                                                      detailedText="\n".join(missing)):
                raise RuntimeError("User declined package installation")
        return self.pip_install(missing, constraints=constraints, skip_packages=skip_packages, blocking=True,
                                show_progress=show_progress, requester=requester)

    def pip_install(self, requirements, constraints=None, no_deps_requirements=None, skip_packages=None,
                    blocking: bool = True, show_progress: bool = True, requester=None, parent=None,
                    logCallback=None, completedCallback=None):
        import subprocess

        import slicer

        args = ["install"] + (requirements.split() if isinstance(requirements, str) else list(requirements))
        if constraints is not None:
            args += ["-c", str(constraints)]
        dialog = show_progress and blocking and not slicer.app.testingEnabled()
        if dialog:
            self.progress_dialogs.append(requester)
        returncode, lines = self.pip(args)
        if returncode != 0:
            if dialog:
                self.error_dialogs.append("\n".join(lines))
                slicer.util.errorDisplay("Package installation failed.", detailedText="\n".join(lines))
            raise subprocess.CalledProcessError(returncode, "pip install")
        return None
