"""Self-test run inside Slicer (Reload and Test, or ctest via slicer_add_python_unittest).

It builds a small synthetic volume with a rotated, flipped, anisotropic grid and a parent
transform, makes a tiny bundle whose output head is rigged to predict label 2 everywhere (so the
expected result is known exactly without training), segments it through the real engine
process with Show uncertainty, and checks segment names, colours, terminology, geometry, transform
and subject hierarchy placement, and the uncertainty map's (confident everywhere: no unsure region).
A second test cancels a run and checks nothing is left behind.
"""
from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from .tinybundle import make_tiny_bundle

def makeVolume(name: str = "MedNeXtV2SelfTestVolume"):
    """20 x 28 x 24 voxels, 0.9 x 1.3 x 2.5 mm, rotated 30 degrees and flipped: a non-trivial grid."""
    voxels = np.random.default_rng(0).normal(0, 20, (20, 28, 24)).astype(np.int16)  # (k, j, i)
    voxels[5:15, 8:20, 6:18] += 300
    angle = math.radians(30)
    rotation = np.array([[-math.cos(angle), -math.sin(angle), 0], [-math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    ijkToRAS = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            ijkToRAS.SetElement(r, c, rotation[r, c] * (0.9, 1.3, 2.5)[c])
        ijkToRAS.SetElement(r, 3, (12.5, -30.0, 7.25)[r])
    return slicer.util.addVolumeFromArray(voxels, ijkToRAS=ijkToRAS, name=name)


def matrixAsArray(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def gridCorners(volumeNode) -> set:
    """The RAS points (0.001 mm) of a volume's eight corner voxels, whatever the voxel order."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    ijkToRAS = matrixAsArray(matrix)
    size = volumeNode.GetImageData().GetDimensions()
    return {tuple(np.round(ijkToRAS @ np.array([i, j, k, 1.0]), 3)[:3])
            for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)}


class MedNeXtV2SegmentTest(ScriptedLoadableModuleTest):
    def setUp(self):
        from MedNeXtV2SegmentLib.install import InstallLogic

        slicer.mrmlScene.Clear()
        InstallLogic().ensureForSelfTest()  # torch builds the tiny bundle; asked, never installed silently
        self.tempDir = tempfile.TemporaryDirectory(prefix="MedNeXtV2SegmentTest-")
        self.bundle = make_tiny_bundle(Path(self.tempDir.name))

    def tearDown(self):
        self.tempDir.cleanup()

    def runTest(self):
        for test in (self.test_SegmentSyntheticVolume, self.test_CancelLeavesNothingBehind):
            self.setUp()
            try:
                test()
            finally:
                self.tearDown()

    def test_SegmentSyntheticVolume(self):
        from MedNeXtV2SegmentLib.logic import MedNeXtV2SegmentLogic

        self.delayDisplay("Segmenting a synthetic volume with a tiny bundle")
        volume = makeVolume()
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "SelfTestTransform")
        volume.SetAndObserveTransformNodeID(transform.GetID())
        events = []
        logic = MedNeXtV2SegmentLogic()
        node = logic.segment(volume, str(self.bundle), device="cpu", tta=False, uncertainty=True,
                             onProgress=events.append)
        self.assertTrue(events and events[-1].fraction <= 1.0, "no progress was reported")

        segmentation = node.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        self.assertEqual(names, ["lesion", "tissue"])
        tissue = segmentation.GetNthSegment(1)
        np.testing.assert_allclose(tissue.GetColor(), (0.0, 200 / 255, 100 / 255), atol=1e-6)
        self.assertIn("SCT^85756007^Tissue", self._terminology(tissue))

        # Geometry: the result lies on the input's grid, voxel for voxel.
        labelmap = node.GetBinaryLabelmapInternalRepresentation(segmentation.GetNthSegmentID(1))
        imageToWorld = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(imageToWorld)
        ijkToRAS = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijkToRAS)
        np.testing.assert_allclose(matrixAsArray(imageToWorld), matrixAsArray(ijkToRAS), atol=1e-4)
        tissueMask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentation.GetNthSegmentID(1), volume)
        self.assertEqual(tissueMask.shape, slicer.util.arrayFromVolume(volume).shape)
        self.assertTrue(tissueMask.all(), "the rigged model labels every voxel 'tissue'")

        self.assertEqual(node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()), volume)
        self.assertEqual(node.GetTransformNodeID(), transform.GetID())
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        self.assertEqual(shNode.GetItemParent(shNode.GetItemByDataNode(node)),
                         shNode.GetItemParent(shNode.GetItemByDataNode(volume)))
        self._checkUncertainty(logic, volume, node, transform)
        self.delayDisplay("Segment test passed")

    def _checkUncertainty(self, logic, volume, node, transform):
        from MedNeXtV2SegmentLib.logic import UNCERTAINTY_COLOR_NODE_ID

        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        children = vtk.vtkIdList()
        shNode.GetItemChildren(shNode.GetItemByDataNode(node), children)
        maps = [shNode.GetItemDataNode(children.GetId(i)) for i in range(children.GetNumberOfIds())]
        self.assertEqual([m.GetName() for m in maps], [f"{node.GetName()} uncertainty"])
        uncertainty = maps[0]
        self.assertEqual(uncertainty.GetDisplayNode().GetColorNodeID(), UNCERTAINTY_COLOR_NODE_ID)
        self.assertEqual(uncertainty.GetTransformNodeID(), transform.GetID())
        self.assertIsNone(uncertainty.GetStorageNode())
        # Same grid in the world; Slicer's file reader may number a left-handed grid's slices the
        # other way round (a flipped k axis), so the grid's corner points are compared, not matrices.
        self.assertEqual(gridCorners(uncertainty), gridCorners(volume))
        values = slicer.util.arrayFromVolume(uncertainty)
        self.assertEqual(values.shape, slicer.util.arrayFromVolume(volume).shape)
        self.assertLess(float(values.max()), 0.01, "the rigged model is sure everywhere")
        self.assertEqual(logic.unsureRegionTour(uncertainty).regions, [])

    @staticmethod
    def _terminology(segment) -> str:
        value = vtk.mutable("")  # VTK's by-reference argument; GetTerminology() is 5.10+ only
        segment.GetTag(segment.GetTerminologyEntryTagName(), value)
        return str(value)

    def test_CancelLeavesNothingBehind(self):
        from MedNeXtV2SegmentLib.logic import EngineError, MedNeXtV2SegmentLogic
        from MedNeXtV2SegmentLib.parameters import SegmentChoices

        self.delayDisplay("Cancelling a run")
        volume = makeVolume()
        logic = MedNeXtV2SegmentLogic()
        nodesBefore = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
        run = logic.start(volume, SegmentChoices(model=str(self.bundle), device="cpu", tta=True))
        logic.poll(run)
        started = time.monotonic()
        logic.cancel(run)
        self.assertLess(time.monotonic() - started, 1.0, "cancel must not block the GUI thread")
        deadline = time.monotonic() + 60  # bounded: a stuck engine fails the test instead of hanging it
        while not logic.poll(run):
            self.assertLess(time.monotonic(), deadline, "the engine did not stop after Cancel")
            slicer.app.processEvents()
            time.sleep(0.05)
        with self.assertRaises(EngineError):
            logic.finish(run)
        self.assertFalse(run.process.is_running())
        self.assertFalse(run.paths.work_dir.exists(), "the run's temp folder must be removed after a cancel")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), nodesBefore)
        self.delayDisplay("Cancel test passed")
