"""Training cases from the Slicer scene: records for pairing, facts for the checks, images for export.

The only module of the Train wizard that reads MRML nodes. Every Slicer call here is checked
against Slicer's source (docs/slicer-api-checks-train.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import slicer
import vtk

from MedNeXtV2TrainLib.case_checks import CaseFacts, Geometry
from MedNeXtV2TrainLib.pairing import NodeRecord

Segment = Tuple[str, str, Tuple[int, int, int]]  # (segment id, name, color 0..255)


@dataclass(frozen=True)
class SceneCase:
    name: str
    volume: object        # vtkMRMLScalarVolumeNode
    segmentation: object  # vtkMRMLSegmentationNode


def _study_key(shNode, node) -> Optional[str]:
    """The study item holding the node, else its parent folder; None for nodes at the top."""
    item = shNode.GetItemByDataNode(node)
    if not item:
        return None
    study = shNode.GetItemAncestorAtLevel(item, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy())
    if study:
        return str(study)
    parent = shNode.GetItemParent(item)
    return None if not parent or parent == shNode.GetSceneItemID() else str(parent)


def scene_records() -> Tuple[List[NodeRecord], List[NodeRecord]]:
    """(volumes, segmentations) of the scene as plain records for `pairing.pair_cases`."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    volumes = [NodeRecord(n.GetID(), n.GetName(), _study_key(shNode, n))
               for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode") if not n.IsA("vtkMRMLLabelMapVolumeNode")]
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    segmentations = [NodeRecord(n.GetID(), n.GetName(), _study_key(shNode, n), n.GetNodeReferenceID(role))
                     for n in slicer.util.getNodesByClass("vtkMRMLSegmentationNode")]
    return volumes, segmentations


def segments_of(segmentationNode) -> List[Segment]:
    segmentation = segmentationNode.GetSegmentation()
    found = []
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segmentId)
        color = tuple(int(round(255 * c)) for c in segment.GetColor())
        found.append((segmentId, segment.GetName(), color))
    return found


def _geometry(matrix: vtk.vtkMatrix4x4, extent: Sequence[int]) -> Geometry:
    """Grid of an IJK-to-RAS matrix and an extent (whose first voxel may not be index 0)."""
    m = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    direction = m[:3, :3] / np.where(spacing > 0, spacing, 1.0)
    origin = m @ np.array([extent[0], extent[2], extent[4], 1.0])
    size = (extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1)
    return Geometry(tuple(int(s) for s in size), tuple(float(s) for s in spacing), tuple(float(o) for o in origin[:3]),
                    tuple(float(d) for d in direction.ravel()))


def volume_geometry(volumeNode) -> Geometry:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return _geometry(matrix, volumeNode.GetImageData().GetExtent())


def segmentation_geometry(segmentationNode) -> Optional[Geometry]:
    """The grid the segments were drawn on (the segmentation's reference geometry), when recorded."""
    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    text = segmentationNode.GetSegmentation().GetConversionParameter(name)
    if not text:
        return None
    image = slicer.vtkOrientedImageData()
    if not slicer.vtkSegmentationConverter.DeserializeImageGeometry(text, image, False):
        return None
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return _geometry(matrix, image.GetExtent())


class ExportedLabelmap:
    """A temporary labelmap node of the chosen segments on the volume's grid (value i+1 = segment i).

    Used as a context manager: the node and the color table the export creates are removed again.
    """

    def __init__(self, case: SceneCase, segmentIds: Sequence[str]) -> None:
        self.case, self.segmentIds = case, list(segmentIds)
        self.node = None

    def __enter__(self):
        self.node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__MedNeXtV2Train_export__")
        ids = vtk.vtkStringArray()
        for segmentId in self.segmentIds:
            ids.InsertNextValue(segmentId)
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            self.case.segmentation, ids, self.node, self.case.volume)
        if not ok:
            self.__exit__(None, None, None)
            raise RuntimeError(f"case {self.case.name}: Slicer could not export segmentation "
                               f"'{self.case.segmentation.GetName()}' onto volume '{self.case.volume.GetName()}'")
        return self.node

    def __exit__(self, *exc) -> None:
        if self.node is not None:
            if self.node.GetDisplayNode():
                slicer.mrmlScene.RemoveNode(self.node.GetDisplayNode().GetColorNode())
            slicer.mrmlScene.RemoveNode(self.node)
            self.node = None


def case_facts(case: SceneCase) -> Tuple[CaseFacts, List[Segment]]:
    """What the checks need: voxels per segment on the volume's grid, both grids, transforms."""
    segments = segments_of(case.segmentation)
    voxels = {}
    if segments:
        with ExportedLabelmap(case, [s[0] for s in segments]) as labelmap:
            counts = np.bincount(slicer.util.arrayFromVolume(labelmap).ravel(), minlength=len(segments) + 1)
        voxels = {name: int(counts[i + 1]) for i, (_, name, _) in enumerate(segments)}
    transformed = case.volume.GetParentTransformNode() is not None or case.segmentation.GetParentTransformNode() is not None
    facts = CaseFacts(case.name, volume_geometry(case.volume), voxels, segmentation_geometry(case.segmentation), transformed)
    return facts, segments


def case_images(case: SceneCase, segmentIds: Sequence[str]):
    """(image, labelmap) as SimpleITK images on the volume's grid, for `DatasetWriter.add_case`."""
    import sitkUtils  # lazy: Slicer starts without loading SimpleITK for this module

    image = sitkUtils.PullVolumeFromSlicer(case.volume)
    with ExportedLabelmap(case, segmentIds) as labelmap:
        label = sitkUtils.PullVolumeFromSlicer(labelmap)
    return image, label
