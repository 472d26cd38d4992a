"""The Train module's dataset export on real Slicer code (slicer-core), from real segmentation nodes.

Three cases from the shared MR scans, read by Slicer's Volumes logic, with segments drawn through
`slicer.util.updateSegmentBinaryLabelmapFromArray`: segments in a different order per case, a
segment missing in one case, overlapping segments (the tissue mask contains the lesion), and a
segmentation drawn on a coarser, shifted grid than its volume. The module's own export
(MedNeXtV2TrainLogic.createJob) writes the nnU-Net layout; every label image must lie on its
volume's grid, each value must mean the same segment in every case (where segments overlap,
the higher dataset value wins, in every case alike), and `mednextv2 train` must accept it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import slicer_stubs
from repo_folders import CORE_DIR

COLORS = {"lesion": (1.0, 0.0, 0.0), "tissue": (0.0, 0.8, 0.4)}


def add_segmentation(slicer, name, volume, segments, reference=None):
    """A segmentation node with `segments` [(name, mask (k, j, i) on reference's grid)], in that order."""
    reference = reference or volume
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name + " segmentation")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    for segmentName, mask in segments:
        segmentId = node.GetSegmentation().AddEmptySegment("", segmentName, COLORS[segmentName])
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype(np.uint8), node, segmentId, reference)
    return node


def scene_cases(slicer, data_dir: Path, folder: Path):
    from MedNeXtV2TrainLib.scene_cases import SceneCase

    brain = sitk.ReadImage(str(data_dir / "mr-brain-lesion" / "brain1_image.nrrd"))
    brain_label = sitk.ReadImage(str(data_dir / "mr-brain-lesion" / "brain1_label.nrrd"))
    centre = np.argwhere(sitk.GetArrayFromImage(brain_label) > 0).mean(axis=0).astype(int)[::-1]
    start = [int(min(max(c - s // 2, 0), n - s)) for c, s, n in zip(centre, (48, 48, 10), brain.GetSize())]
    for image, name in ((brain, "brain.nrrd"), (brain_label, "brain_label.nrrd")):
        sitk.WriteImage(sitk.RegionOfInterest(image, [48, 48, 10], start), str(folder / name))

    breast = slicer_stubs.load_volume(data_dir / "mr-breast" / "breast1_image.nrrd", "Breast")
    breast_lesion = slicer.util.arrayFromVolume(slicer_stubs.load_volume(data_dir / "mr-breast" / "breast1_label.nrrd",
                                                                         "Breast label")) > 0
    breast_tissue = slicer.util.arrayFromVolume(breast) > 60  # contains the lesion: the two overlap
    brain_node = slicer_stubs.load_volume(folder / "brain.nrrd", "Brain")
    brain_lesion = slicer.util.arrayFromVolume(slicer_stubs.load_volume(folder / "brain_label.nrrd", "Brain label")) > 0
    brain_tissue = slicer.util.arrayFromVolume(brain_node) > 150
    assert breast_lesion.any() and brain_lesion.any() and (breast_lesion & breast_tissue).any() and (brain_lesion & brain_tissue).any()

    # the third case's segments were drawn on a coarser, shifted grid than its volume
    coarse = slicer_stubs.ijk_to_ras(breast)
    coarse[:3, :3] *= 2.0
    coarse[:3, 3] += (3.1, -2.2, 1.7)
    grid = slicer.util.addVolumeFromArray(np.zeros((12, 62, 24), np.uint8), slicer.util.vtkMatrixFromArray(coarse), "Drawn on")
    drawn = np.zeros((12, 62, 24), bool)
    drawn[3:9, 10:40, 4:18] = True
    second = slicer_stubs.load_volume(data_dir / "mr-breast" / "breast1_image.nrrd", "Breast again")

    nodes = [(breast, add_segmentation(slicer, "Breast", breast, [("lesion", breast_lesion), ("tissue", breast_tissue)])),
             (brain_node, add_segmentation(slicer, "Brain", brain_node, [("tissue", brain_tissue), ("lesion", brain_lesion)])),
             (second, add_segmentation(slicer, "Breast again", second, [("tissue", drawn)], reference=grid))]
    return [SceneCase(volume.GetName(), volume, segmentation) for volume, segmentation in nodes]


def slicer_export(slicer, case, segmentName) -> np.ndarray:
    """The named segment exported onto the case's volume by Slicer (all False when the case lacks it)."""
    segmentId = case.segmentation.GetSegmentation().GetSegmentIdBySegmentName(segmentName)
    if not segmentId:
        return np.zeros(slicer.util.arrayFromVolume(case.volume).shape, bool)
    return slicer_stubs.export_segment(case.segmentation, segmentId, case.volume)


def test_scene_cases_export_to_one_label_table_and_train_accepts_them(slicer, data_dir, tmp_path):
    from MedNeXtV2TrainLib.label_table import dataset_labels, default_choices
    from MedNeXtV2TrainLib.logic import MedNeXtV2TrainLogic
    from MedNeXtV2TrainLib.settings import TrainSettings

    cases = scene_cases(slicer, data_dir, tmp_path)
    logic = MedNeXtV2TrainLogic()
    problems, union, _ = logic.checkCases(cases)
    assert [s.name for s in union] == ["lesion", "tissue"]
    assert [p for p in problems if p.severity == "error"] == [], problems
    labels = dataset_labels(union, default_choices(union, []), [])
    settings = TrainSettings(model_name="Overlap", modality="MR")
    _, state = MedNeXtV2TrainLogic.createJob(settings, tmp_path / "jobs", cases, labels)
    root = Path(state.dataset)
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    value = {name: v for name, v in meta["labels"].items() if name != "background"}
    assert sorted(value) == ["lesion", "tissue"] and meta["numTraining"] == 3

    for case in cases:
        caseId = case.name.replace(" ", "_")
        image = sitk.ReadImage(str(root / "imagesTr" / f"{caseId}_0000.nrrd"))
        label = sitk.ReadImage(str(root / "labelsTr" / f"{caseId}.nrrd"))
        slicer_stubs.assert_on_volume_grid(image, case.volume, f"{case.name} image")
        slicer_stubs.assert_on_volume_grid(label, case.volume, f"{case.name} label")
        # The same voxels at the same world points as the file Slicer read (Slicer's reader may
        # index the slices the other way round, as it does for the brain MR crop).
        source = sitk.ReadImage(case.volume.GetStorageNode().GetFileName())
        onSource = sitk.Resample(image, source, sitk.Transform(), sitk.sitkNearestNeighbor, -12345)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(onSource), sitk.GetArrayFromImage(source), err_msg=case.name)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), slicer.util.arrayFromVolume(case.volume))
        expected = np.zeros(sitk.GetArrayFromImage(label).shape, np.uint8)
        for name in sorted(value, key=value.get):  # higher value wins where segments overlap
            expected[slicer_export(slicer, case, name)] = value[name]
        written = sitk.GetArrayFromImage(label)
        assert int((written != expected).sum()) == 0, f"{case.name}: {int((written != expected).sum())} voxels differ"
    assert not (sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr" / "Breast_again.nrrd"))) == value["lesion"]).any()

    # the engine takes the dataset as it is: one epoch of one iteration on a 32^3 patch (16^3 crashes in GroupNorm)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(CORE_DIR), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "bundle"
    result = subprocess.run([sys.executable, "-m", "mednextv2", "train", str(root), "-o", str(out), "--preset", "v2-tiny",
                             "--epochs", "1", "--iterations", "1", "--patch", "32", "32", "32", "--batch-size", "1",
                             "--device", "cpu", "--val-cases", "Breast_again", "--progress", "none", "--threads", "1"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    from mednextv2.bundle import load_bundle

    assert {label.name: label.value for label in load_bundle(out).labels} == value


def test_one_scene_case_is_enough_to_train(slicer, data_dir, tmp_path, monkeypatch):
    """The wizard's checks pass one case, as the engine trains on one (train/run.split_cases): the
    module's export and its own training run give a model, with nothing held out."""
    from mednextv2.bundle import load_bundle
    from MedNeXtV2SegmentLib.engine_client import EngineClient
    from MedNeXtV2TrainLib.label_table import dataset_labels, default_choices
    from MedNeXtV2TrainLib.logic import MedNeXtV2TrainLogic
    from MedNeXtV2TrainLib.scene_cases import SceneCase
    from MedNeXtV2TrainLib.settings import TrainSettings

    monkeypatch.setenv("MEDNEXTV2_HOME", str(tmp_path / "home"))
    breast = slicer_stubs.load_volume(data_dir / "mr-breast" / "breast1_image.nrrd", "Breast")
    lesion = slicer.util.arrayFromVolume(slicer_stubs.load_volume(data_dir / "mr-breast" / "breast1_label.nrrd", "label")) > 0
    cases = [SceneCase("Breast", breast, add_segmentation(slicer, "Breast", breast, [("lesion", lesion)]))]
    logic = MedNeXtV2TrainLogic(EngineClient(python=sys.executable))
    problems, union, _ = logic.checkCases(cases)
    assert [(p.case, p.severity) for p in problems] == [("dataset", "warning")], problems
    settings = TrainSettings(model_name="One case", modality="MR", minutes=None, epochs=1, iterations=1,
                             patch_size=(32, 32, 32), device="cpu", seed=1)
    jobDir, state = logic.createJob(settings, tmp_path / "jobs", cases, dataset_labels(union, default_choices(union, []), []))
    run = logic.startTraining(jobDir, state)
    assert run.wait(timeout=600) == "finished", run.outcome() + "\n" + "\n".join(run.log)
    bundle = load_bundle(state.output_bundle)
    assert [label.name for label in bundle.labels] == ["lesion"]
    assert not bundle.spec.provenance.metrics.get("validation_cases"), "one case: nothing held out"
