"""A small stand-in for the parts of Slicer that MedNeXtV2SegmentLib.logic calls.

Only the calls the logic makes, with the signatures checked in docs/slicer-api-checks.md, backed
by real files: `exportNode` writes the volume's SimpleITK image, `loadSegmentation` reads the
.seg.nrrd header the engine wrote (segment names, colours, label values, tags), so the logic's
export -> run -> load -> label flow runs for real outside Slicer. Install with `install()`,
which puts fake `slicer`, `slicer.util` and `slicer.ScriptedLoadableModule` modules in
sys.modules; `uninstall()` removes them and restores what was there.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Dict, List, Optional


class FakeNode:
    def __init__(self, name: str = "") -> None:
        self.name, self.transformNodeID, self.references, self.id = name, None, {}, f"vtkMRMLNode{id(self)}"

    def GetID(self):
        return self.id

    def GetName(self):
        return self.name

    def SetName(self, name):
        self.name = name

    def GetTransformNodeID(self):
        return self.transformNodeID

    def SetAndObserveTransformNodeID(self, nodeID):
        self.transformNodeID = nodeID
        return True


class FakeVolumeNode(FakeNode):
    """A scalar volume holding a SimpleITK image (what exportNode writes)."""

    def __init__(self, name: str, image) -> None:
        super().__init__(name)
        self.image = image


class FakeSegment:
    def __init__(self, name: str, color, labelValue: int, tags: Dict[str, str]) -> None:
        self.name, self.color, self.labelValue, self.tags = name, tuple(color), labelValue, dict(tags)

    @staticmethod
    def GetTerminologyEntryTagName():
        return "TerminologyEntry"

    def GetName(self):
        return self.name

    def SetName(self, name):
        self.name = name

    def GetColor(self):
        return self.color

    def SetColor(self, r, g, b):
        self.color = (r, g, b)

    def GetLabelValue(self):
        return self.labelValue

    def SetTag(self, tag, value):
        self.tags[tag] = value


class FakeSegmentation:
    def __init__(self, segments: Optional[List[FakeSegment]] = None) -> None:
        self.segments = list(segments or [])

    def GetNumberOfSegments(self):
        return len(self.segments)

    def GetNthSegment(self, index):
        return self.segments[index]

    def DeepCopy(self, other):
        self.segments = [FakeSegment(s.name, s.color, s.labelValue, s.tags) for s in other.segments]


class FakeSegmentationNode(FakeNode):
    def __init__(self, name: str = "", segmentation: Optional[FakeSegmentation] = None) -> None:
        super().__init__(name)
        self.segmentation = segmentation or FakeSegmentation()
        self.displayNodesCreated = False

    @staticmethod
    def GetReferenceImageGeometryReferenceRole():
        return "referenceImageGeometryRef"

    def GetSegmentation(self):
        return self.segmentation

    def CreateDefaultDisplayNodes(self):
        self.displayNodesCreated = True

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volumeNode):
        self.references[self.GetReferenceImageGeometryReferenceRole()] = volumeNode

    def GetNodeReference(self, role):
        return self.references.get(role)


class FakeParameterNode:
    def __init__(self) -> None:
        self.parameters: Dict[str, str] = {}

    def SetParameter(self, name, value):
        self.parameters[name] = value

    def GetParameter(self, name):
        return self.parameters.get(name, "")


class FakeScene:
    def __init__(self) -> None:
        self.nodes: List[FakeNode] = []
        self.parameterNode = FakeParameterNode()

    def AddNode(self, node):
        self.nodes.append(node)
        return node

    def RemoveNode(self, node):
        self.nodes.remove(node)

    def GetNumberOfNodesByClass(self, className):
        kinds = {"vtkMRMLSegmentationNode": FakeSegmentationNode, "vtkMRMLScalarVolumeNode": FakeVolumeNode}
        return sum(isinstance(n, kinds[className]) for n in self.nodes)


class FakeSubjectHierarchy:
    """Items are the nodes themselves; `parents` maps item -> parent item (0: scene)."""

    def __init__(self) -> None:
        self.parents: Dict[object, object] = {}

    def GetItemByDataNode(self, node):
        return node if node in self.parents else 0

    def GetItemParent(self, item):
        return self.parents.get(item, 0)

    def SetItemParent(self, item, parent):
        self.parents[item] = parent


class FakeApp:
    def __init__(self, temporaryPath: str) -> None:
        self.temporaryPath = temporaryPath
        self.events = 0

    def processEvents(self):
        self.events += 1


def read_seg_nrrd(path: Path) -> FakeSegmentation:
    import nrrd

    header = nrrd.read_header(str(path))
    segments, i = [], 0
    while f"Segment{i}_Name" in header:
        tags = dict(t.split(":", 1) for t in header.get(f"Segment{i}_Tags", "").split("|") if ":" in t)
        color = [float(c) for c in header[f"Segment{i}_Color"].split()]
        segments.append(FakeSegment(header[f"Segment{i}_Name"], color, int(header[f"Segment{i}_LabelValue"]), tags))
        i += 1
    return FakeSegmentation(segments)


class FakeSlicer(types.ModuleType):
    def __init__(self, temporaryPath: str) -> None:
        super().__init__("slicer")
        self.app = FakeApp(temporaryPath)
        self.mrmlScene = FakeScene()
        self.subjectHierarchy = FakeSubjectHierarchy()
        self.exported: List[Path] = []
        self.exportedGeometry: List[tuple] = []
        stubs = self

        class vtkMRMLSubjectHierarchyNode:
            @staticmethod
            def GetSubjectHierarchyNode(scene):
                return stubs.subjectHierarchy

        self.vtkMRMLSubjectHierarchyNode = vtkMRMLSubjectHierarchyNode
        self.util = types.ModuleType("slicer.util")
        self.util.exportNode = self._exportNode
        self.util.loadSegmentation = self._loadSegmentation

    def _exportNode(self, node, filename, properties={}, world=False):
        import SimpleITK as sitk

        assert world is False, "the logic must export the local grid"
        sitk.WriteImage(node.image, str(filename), bool(properties.get("useCompression", 1)))
        self.exported.append(Path(filename))
        written = sitk.ReadImage(str(filename))
        self.exportedGeometry.append((written.GetSize(), written.GetOrigin(), written.GetSpacing(), written.GetDirection()))
        return True

    def _loadSegmentation(self, filename, properties={}):
        node = FakeSegmentationNode(properties.get("name", Path(filename).name), read_seg_nrrd(Path(filename)))
        self.mrmlScene.AddNode(node)
        self.subjectHierarchy.parents[node] = 0  # new nodes start at the scene level
        return node

    def addVolume(self, name, image, parentItem="study-1", transformNodeID=None) -> FakeVolumeNode:
        volume = FakeVolumeNode(name, image)
        volume.transformNodeID = transformNodeID
        self.mrmlScene.AddNode(volume)
        self.subjectHierarchy.parents[volume] = parentItem
        return volume


_STUBBED = ("slicer", "slicer.util", "slicer.ScriptedLoadableModule")
_saved: Dict[str, object] = {}


def install(temporaryPath: str) -> FakeSlicer:
    _saved.clear()
    _saved.update({name: sys.modules[name] for name in _STUBBED if name in sys.modules})
    slicer = FakeSlicer(temporaryPath)
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

        def getParameterNode(self):
            return slicer.mrmlScene.parameterNode

    scripted.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    slicer.ScriptedLoadableModule = scripted
    sys.modules.update({"slicer": slicer, "slicer.util": slicer.util, "slicer.ScriptedLoadableModule": scripted})
    for name in [m for m in sys.modules if m.startswith("MedNeXtV2SegmentLib.logic")]:
        del sys.modules[name]
    return slicer


def uninstall() -> None:
    """Remove the stubs and put back whatever was there before (another test's own stubs)."""
    for name in (*_STUBBED, "MedNeXtV2SegmentLib.logic"):
        sys.modules.pop(name, None)
    sys.modules.update(_saved)
    _saved.clear()
