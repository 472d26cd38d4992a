"""Self-test inside Slicer: synthetic labeled cases -> pairing -> checks -> export -> a tiny fine-tune -> segment.

Registered with `slicer_add_python_unittest(SCRIPT MedNeXtV2Train.py)` and run by "Reload and
Test". The training is real (`mednextv2 train`, v2-tiny, CPU, 2 epochs of 3 iterations at 32^3),
so it checks the whole path a user takes, in a minute or two.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from MedNeXtV2SegmentLib.logic import MedNeXtV2SegmentLogic
from MedNeXtV2TrainLib.label_table import dataset_labels, default_choices
from MedNeXtV2TrainLib.logic import DATASET_FOLDER, MedNeXtV2TrainLogic
from MedNeXtV2TrainLib.resume_state import load_state
from MedNeXtV2TrainLib.scene_cases import SceneCase
from MedNeXtV2TrainLib.settings import TrainSettings
from MedNeXtV2TrainLib.trained_model import read_trained_model


def _ijk_to_ras(angle_deg: float, spacing, origin) -> np.ndarray:
    """A rotated, anisotropic grid: geometry must survive export exactly, not only for identity grids."""
    a = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


def make_case(name: str, seed: int, study):
    """A noisy volume with a bright ellipsoid and a segmentation of it (segment "sphere"), in `study`."""
    rng = np.random.default_rng(seed)
    shape = (36, 48, 48)  # k, j, i
    k, j, i = np.indices(shape)
    center = np.array(shape) / 2 + rng.uniform(-4, 4, 3)
    inside = ((k - center[0]) / 7) ** 2 + ((j - center[1]) / 10) ** 2 + ((i - center[2]) / 9) ** 2 <= 1
    image = rng.normal(100, 20, shape) + 300 * inside
    ijkToRAS = _ijk_to_ras(15 * seed, (0.8, 0.9, 2.0), (-20.0 + seed, 10.0, -30.0))
    volume = slicer.util.addVolumeFromArray(image.astype(np.int16), ijkToRAS, name)
    labelmap = slicer.util.addVolumeFromArray(inside.astype(np.uint8), ijkToRAS, name + " label", "vtkMRMLLabelMapVolumeNode")
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name + " segmentation")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation):
        raise RuntimeError("could not import the synthetic labelmap")
    segmentation.GetSegmentation().GetNthSegment(0).SetName("sphere")
    slicer.mrmlScene.RemoveNode(labelmap)
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    for node in (volume, segmentation):
        shNode.SetItemParent(shNode.GetItemByDataNode(node), study)
    return volume, segmentation, inside


class MedNeXtV2TrainTest(ScriptedLoadableModuleTest):
    def setUp(self):
        from MedNeXtV2SegmentLib.install import InstallLogic

        slicer.mrmlScene.Clear()
        InstallLogic().ensureForSelfTest()  # the engine trains with torch: asked, never installed silently
        self.workDir = Path(tempfile.mkdtemp(prefix="MedNeXtV2TrainTest-"))

    def tearDown(self):
        shutil.rmtree(self.workDir, ignore_errors=True)

    def runTest(self):
        self.setUp()
        try:
            self.test_fine_tune_on_scene_cases()
        finally:
            self.tearDown()

    def test_fine_tune_on_scene_cases(self):
        self.delayDisplay("Synthetic cases in one patient's studies")
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        patient = shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Patient")
        made = [make_case(f"MR {n}", n, shNode.CreateStudyItem(patient, f"Study {n}")) for n in (1, 2, 3)]
        logic = MedNeXtV2TrainLogic()

        self.delayDisplay("Pairing and checks")
        pairing = logic.pairScene()
        self.assertEqual(len(pairing.pairs), 3)
        self.assertTrue(all(p.reason == "segmented on this volume" for p in pairing.pairs))
        cases = [SceneCase(volume.GetName(), volume, segmentation) for volume, segmentation, _ in made]
        problems, union, _ = logic.checkCases(cases)
        self.assertEqual([p for p in problems if p.severity == "error"], [])
        self.assertEqual([s.name for s in union], ["sphere"])

        self.delayDisplay("Export")
        labels = dataset_labels(union, default_choices(union, []), [])
        settings = TrainSettings(model_name="Self-test sphere", architecture="v2-tiny", modality="MR", minutes=None,
                                 epochs=2, iterations=3, patch_size=(32, 32, 32), device="cpu", val_fraction=0.34)
        jobDir, state = logic.createJob(settings, self.workDir, cases, labels)
        dataset = Path(state.dataset)
        self.assertEqual(dataset, jobDir / DATASET_FOLDER)
        import SimpleITK as sitk  # lazy: this module is imported when Slicer starts

        exported = sitk.ReadImage(str(dataset / "labelsTr" / "MR_1.nrrd"))
        volume, _, inside = made[0]
        np.testing.assert_array_equal(sitk.GetArrayFromImage(exported), inside.astype(np.uint8))
        ras = np.array(volume.GetOrigin())
        np.testing.assert_allclose(exported.GetOrigin(), [-ras[0], -ras[1], ras[2]], atol=1e-4)  # RAS -> LPS

        self.delayDisplay("Training a tiny model (CPU)")
        run = logic.startTraining(jobDir, state)
        status = run.wait(timeout=900, on_update=lambda result: slicer.app.processEvents())
        self.assertEqual(status, "finished", run.outcome())
        self.assertTrue(run.curves.loss_series().points, "loss curve is empty")
        self.assertEqual(load_state(jobDir).status, "finished")
        trained = read_trained_model(Path(state.output_bundle))
        self.assertEqual(trained.labels, ("sphere",))
        self.assertEqual(trained.id, jobDir.name)

        self.delayDisplay("Segmenting with the new bundle")
        result = MedNeXtV2SegmentLogic(logic.engine).segment(volume, str(trained.path), device="cpu", tta=False)  # the path, not accuracy
        segment = result.GetSegmentation().GetNthSegment(0)
        self.assertEqual(segment.GetName(), "sphere")
        self.delayDisplay("Test passed")
