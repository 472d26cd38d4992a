"""The Segment module end to end on real Slicer code: slicer-core MRML, the real engine, a real bundle.

Scans are read by Slicer's Volumes logic (crops of the shared CT and brain MR, an oblique,
anisotropic, axis-permuted copy of the CT, and the breast MR under a parent linear transform)
and segmented by MedNeXtV2SegmentLogic with `python -m mednextv2` (this tree's engine) and a
threshold bundle (segment_fixtures) whose output has two non-empty labels. The four runs are
started together and polled, as the panel does; each run's .seg.nrrd is kept before `finish()`
loads it, so Slicer's own export of every segment can be compared with what the engine wrote.
Only slicer.app / mrmlScene / the module base classes are stand-ins (Testing/slicer_stubs.py).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import vtk

import slicer_stubs
from segment_fixtures import rotation, save_bundle, threshold_bundle

EXPECTED = [("structure1", (1.0, 0.0, 0.0)), ("structure2", (0.0, 1.0, 0.0))]  # bundle_spec's names, colours


def crop(image: sitk.Image, centre_xyz, size_xyz) -> sitk.Image:
    start = [int(max(0, min(c - s // 2, n - s))) for c, s, n in zip(centre_xyz, size_xyz, image.GetSize())]
    return sitk.RegionOfInterest(image, list(size_xyz), start)


def write_scans(data_dir: Path, folder: Path) -> dict:
    """Small crops of the shared scans as files for Slicer's reader; name -> path."""
    ct = sitk.ReadImage(str(data_dir / "ct-lung" / "lung1_image.nrrd"))
    tumour = np.argwhere(sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "ct-lung" / "lung1_label.nrrd"))) > 0)
    ct = crop(ct, tumour.mean(axis=0)[::-1], (48, 40, 8))
    mr = sitk.ReadImage(str(data_dir / "mr-brain-lesion" / "brain1_image.nrrd"))  # flipped y axis in the file
    mr = crop(mr, (128, 128, 12), (40, 48, 8))
    oblique = sitk.PermuteAxes(ct, [2, 0, 1])  # same voxels, axes in another order
    oblique.SetSpacing((3.5, 0.8, 0.6))
    oblique.SetDirection(tuple((rotation(20, -35, 50) @ np.array(oblique.GetDirection()).reshape(3, 3)).ravel()))
    oblique.SetOrigin((12.5, -40.0, 7.25))
    scans = {"CT": ct, "MR": mr, "Oblique CT": oblique, "Transformed MR": sitk.ReadImage(str(data_dir / "mr-breast" / "breast1_image.nrrd"))}
    paths = {}
    for name, image in scans.items():
        paths[name] = folder / (name.replace(" ", "_") + ".nrrd")
        sitk.WriteImage(image, str(paths[name]))
    return paths


@pytest.fixture(scope="module")
def segmented(data_dir, tmp_path_factory):
    """One scene, four volumes in two studies, four real engine runs started together."""
    folder = tmp_path_factory.mktemp("slicer-mrml")
    slicer = slicer_stubs.install(str(folder / "slicer-temp"))
    try:
        from MedNeXtV2SegmentLib.logic import MedNeXtV2SegmentLogic
        from MedNeXtV2SegmentLib.parameters import SegmentChoices

        bundle = save_bundle(threshold_bundle((120.0, 200.0)), folder, "threshold-model")
        volumes = {name: slicer_stubs.load_volume(path, name) for name, path in write_scans(data_dir, folder).items()}
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Registration")
        transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(
            np.array([[0.0, -1.0, 0.0, 10.0], [1.0, 0.0, 0.0, -5.0], [0.0, 0.0, 1.0, 2.5], [0, 0, 0, 1.0]])))
        volumes["Transformed MR"].SetAndObserveTransformNodeID(transform.GetID())
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        patient = shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Patient")
        studies = {name: shNode.CreateStudyItem(patient, f"Study {i % 2}") for i, name in enumerate(volumes)}
        for name, volume in volumes.items():
            assert shNode.GetItemByDataNode(volume), f"{name} has no subject hierarchy item"
            shNode.SetItemParent(shNode.GetItemByDataNode(volume), studies[name])

        logic = MedNeXtV2SegmentLogic()
        runs = {name: logic.start(volume, SegmentChoices(model=str(bundle), device="cpu", tta=False))
                for name, volume in volumes.items()}
        engine, nodes, pending = {}, {}, dict(runs)
        deadline = time.monotonic() + 600
        while pending and time.monotonic() < deadline:
            for name, run in list(pending.items()):
                if logic.poll(run):
                    kept = folder / f"engine-{name.replace(' ', '_')}.seg.nrrd"
                    if run.paths.output.exists():
                        shutil.copy(run.paths.output, kept)
                    nodes[name] = logic.finish(run)
                    engine[name] = sitk.ReadImage(str(kept))
                    del pending[name]
            time.sleep(0.05)
        assert not pending, f"engine runs did not finish: {list(pending)}"
        yield slicer, logic, bundle, volumes, nodes, engine, studies, transform
    finally:
        slicer_stubs.uninstall()


def test_each_segment_exported_by_slicer_equals_the_engine_labelmap(segmented):
    slicer, _, _, volumes, nodes, engine, _, _ = segmented
    for name, volume in volumes.items():
        slicer_stubs.assert_on_volume_grid(engine[name], volume, name)
        labels = sitk.GetArrayFromImage(engine[name])
        assert {1, 2} <= set(np.unique(labels)), f"{name}: the comparison needs two non-empty labels"
        segmentation = nodes[name].GetSegmentation()
        for i in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(i)
            value = segmentation.GetSegment(segmentId).GetLabelValue()
            exported = slicer_stubs.export_segment(nodes[name], segmentId, volume)
            assert exported.shape == labels.shape, name
            mismatch = int((exported != (labels == value)).sum())
            assert mismatch == 0, f"{name}, segment {segmentId}: {mismatch} voxels differ from the engine's labelmap"


def test_names_colours_and_terminology_read_back_through_slicer(segmented):
    slicer, _, _, volumes, nodes, _, _, _ = segmented
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    for name in volumes:
        segmentation = nodes[name].GetSegmentation()
        segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
        assert [(s.GetName(), tuple(round(c, 6) for c in s.GetColor())) for s in segments] == EXPECTED, name
        entry = slicer.vtkSlicerTerminologyEntry()
        assert terminologies.DeserializeTerminologyEntry(segments[0].GetTerminology(), entry), name
        assert (entry.GetCategoryObject().GetCodeValue(), entry.GetTypeObject().GetCodeValue()) == ("49755003", "108369006")
        assert entry.GetTypeObject().GetCodeMeaning() == "Neoplasm"
        assert nodes[name].GetName() == f"{name} - Known threshold function"


def test_reference_geometry_transform_and_study_placement(segmented):
    slicer, _, _, volumes, nodes, _, studies, transform = segmented
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    for name, volume in volumes.items():
        node = nodes[name]
        assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is volume, name
        internal = node.GetBinaryLabelmapInternalRepresentation(node.GetSegmentation().GetNthSegmentID(0))
        imageToWorld = vtk.vtkMatrix4x4()
        internal.GetImageToWorldMatrix(imageToWorld)
        np.testing.assert_allclose(slicer_stubs.matrix_as_array(imageToWorld), slicer_stubs.ijk_to_ras(volume),
                                   atol=1e-5, err_msg=name)
        assert node.GetTransformNodeID() == volume.GetTransformNodeID(), name
        assert shNode.GetItemParent(shNode.GetItemByDataNode(node)) == studies[name], name
        assert node.GetModifiedSinceRead(), f"{name}: read from a deleted temporary file, so Save must offer it"
    assert nodes["Transformed MR"].GetTransformNodeID() == transform.GetID()


def test_replacing_an_existing_segmentation_keeps_ids_and_adds_nothing(segmented):
    slicer, logic, bundle, volumes, nodes, _, _, _ = segmented
    volume, node = volumes["Transformed MR"], nodes["Transformed MR"]
    segmentation = node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    before = {cls: slicer.mrmlScene.GetNumberOfNodesByClass(cls)
              for cls in ("vtkMRMLNode", "vtkMRMLSegmentationNode", "vtkMRMLColorNode", "vtkMRMLStorageNode")}
    again = logic.segment(volume, str(bundle), outputNode=node, device="cpu", tta=False)
    assert again is node
    assert [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())] == ids
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == [n for n, _ in EXPECTED]
    after = {cls: slicer.mrmlScene.GetNumberOfNodesByClass(cls) for cls in before}
    assert after == before, "the second run left extra nodes in the scene"
    assert node.GetModifiedSinceRead()
