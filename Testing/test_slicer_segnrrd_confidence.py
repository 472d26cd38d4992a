"""Each segment's mean confidence in the engine's .seg.nrrd, read by Slicer's own reader
(slicer-core's vtkMRMLSegmentationStorageNode) as the segment tag `MedNeXtV2.MeanConfidence`.

Checked against Slicer's source (v5.6.0, v5.8.0, main): vtkMRMLSegmentationStorageNode::
SetSegmentTagsFromString splits `Segment<i>_Tags` at '|' and each item at its first ':' into
vtkSegment::SetTag(key, value).
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from mednextv2.bundle import Label
from mednextv2.export import CONFIDENCE_TAG, write_result


def test_slicer_reads_each_segments_mean_confidence_tag(tmp_path, data_dir):
    scan = sitk.ReadImage(str(data_dir / "mr-breast" / "breast1_image.nrrd"))
    array = sitk.GetArrayFromImage(scan)
    labelmap = sitk.GetImageFromArray((array > np.percentile(array, 80)).astype(np.uint8))
    labelmap.CopyInformation(scan)
    labels = [Label(1, "bright", (255, 0, 0)), Label(2, "absent", (0, 255, 0))]
    path = write_result(labelmap, labels, tmp_path / "result.seg.nrrd", confidence={1: 0.91234, 2: None})

    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    bright = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("bright"))
    absent = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("absent"))
    assert bright.HasTag(CONFIDENCE_TAG)
    assert float(_tag(bright, CONFIDENCE_TAG)) == pytest.approx(0.9123, abs=1e-9)
    assert not absent.HasTag(CONFIDENCE_TAG)  # an empty segment has no confidence
    assert _tag(bright, "Segmentation.Status") == "completed"


def _tag(segment, key: str) -> str:
    value = vtk.reference("")
    assert segment.GetTag(key, value)
    return str(value)
