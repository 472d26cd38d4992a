"""The whole journey a user takes through both modules, on Slicer's real core and the real engine.

One test, in the order a user works: load a real MR scan with the Volumes logic; import an
nnU-Net MedNeXt model (the official reference weights, Testing/fixtures/official-mednext) with
the call the Segment panel's Import button makes; segment; correct the result as a user does
(erase part of a segment, paint voxels); fine-tune from the imported model in the Train module
on the corrected case plus a second real case (1-minute budget); register the new model; find it
in the Segment module's model list without pressing Refresh; segment again; save the scene into a
new folder as Slicer's Save dialog does; clear the scene; read the .mrml back; check every node
and its voxels came back and no file lies in a temporary or run folder.

Only slicer_stubs.py's app layer stands in (no Qt); every MRML node, logic and storage node is
Slicer's own, every engine run is a real child process.
"""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import SimpleITK as sitk

import slicer_stubs
from test_import_nnunet import dataset_json, plans_json, write_results  # the nnU-Net v2 results layout

CASE = "v2pattern_C4_k3_in1_cls3_ds"  # official MedNeXt-v2 weights: 1 input, 3 classes
ENGINE_TIMEOUT_S = 240
TRAIN_TIMEOUT_S = 420
CLASSES = {"volume": "vtkMRMLScalarVolumeNode", "segmentation": "vtkMRMLSegmentationNode"}


@pytest.fixture()
def scene(tmp_path, monkeypatch):
    """Real slicer-core with the app stand-in; the engine's home (model cache) in tmp_path."""
    from safetensors.torch import load_file  # noqa: F401  (fail early without the engine's deps)

    monkeypatch.setenv("MEDNEXTV2_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MEDNEXTV2_CATALOGS", raising=False)
    before = set(sys.modules)
    slicer = slicer_stubs.install(str(tmp_path / "slicer-temp"))
    try:
        yield slicer
    finally:
        slicer_stubs.uninstall()
        for name in set(sys.modules) - before:
            if name.startswith(("MedNeXtV2SegmentLib", "MedNeXtV2TrainLib")):
                del sys.modules[name]


def drive(logic, run):
    """What a panel's timer does with an engine run: poll until it ends, then finish it."""
    deadline = time.monotonic() + ENGINE_TIMEOUT_S
    while not logic.poll(run):
        assert time.monotonic() < deadline, f"{run.kind} did not finish:\n" + "\n".join(run.process.stderr_tail)
        time.sleep(0.1)
    return logic.finish(run)


def panel_model_ids(engine, heard: list) -> set:
    """The ids the Segment panel lists when shown, without its Refresh button: it asks the shared
    engine client for the list (SegmentPanel.refreshModels(force=False): read only when none is cached
    or a read is under way) and shows what its listener is told (onModelList). Here the client's poll
    timer is driven by hand; `heard` collects what the listener was told."""
    engine.modelList.load()
    deadline = time.monotonic() + ENGINE_TIMEOUT_S
    while not engine.modelList.poll():
        assert time.monotonic() < deadline, "the model list was not read"
        time.sleep(0.1)
    assert None in heard and all(error is None for error in heard), heard
    return {choice.id for choice in engine.modelList.models}


def segments_by_name(node) -> dict:
    segmentation = node.GetSegmentation()
    return {segmentation.GetNthSegment(i).GetName(): segmentation.GetNthSegmentID(i)
            for i in range(segmentation.GetNumberOfSegments())}


def inside(path, folder) -> bool:
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def storage_files(slicer) -> dict:
    """Node name -> the file its storage node names, for every storable node the scene holds."""
    files = {}
    for node in slicer.util.getNodesByClass("vtkMRMLStorableNode"):
        storage = node.GetStorageNode()
        if storage is not None and storage.GetFileName():
            files[node.GetName()] = storage.GetFileName()
    return files


def save_scene_as_slicer_does(slicer, folder: Path) -> Path:
    """Slicer's Save dialog with every node ticked and "Change directory for selected files" set to
    `folder` (qSlicerSaveDataDialog: nodeFileInfo, setDirectory, saveNodes through qSlicerNodeWriter::write,
    then saveScene through qSlicerSceneWriter::writeToMRML: root directory and URL, then Commit)."""
    folder.mkdir(parents=True)
    for node in slicer.util.getNodesByClass("vtkMRMLStorableNode"):
        if node.GetHideFromEditors() or not node.GetSaveWithScene():
            continue
        if node.GetStorageNode() is None and not node.AddDefaultStorageNode():
            raise AssertionError(f"Slicer has no storage node for {node.GetName()}")
        storage = node.GetStorageNode()
        if storage is None:
            continue  # stored in the .mrml itself
        # qSlicerCoreIOManager::forceFileNameValidCharacters (drops other characters, strips spaces),
        # then the format's extension (the existing one, or the default)
        stem = re.sub(r"[^A-Za-z0-9 \-_.()$!~#'%^{}]", "", node.GetName()).strip()
        extension = storage.GetSupportedFileExtension() if storage.GetFileName() else ""
        extension = extension or "." + storage.GetDefaultWriteFileExtension()
        storage.SetFileName(str(folder / f"{stem}{extension}"))
        storage.SetURI(None)
        assert storage.WriteData(node), f"Slicer could not write {node.GetName()}"
    scene_file = folder / "journey.mrml"
    slicer.mrmlScene.SetURL(str(scene_file))
    slicer.mrmlScene.SetRootDirectory(str(folder))
    assert slicer.mrmlScene.Commit(), "Slicer could not write the scene"
    return scene_file


def read_scene_back(slicer, scene_file: Path) -> None:
    """qSlicerSceneReader::load with clear: SetURL, then Connect (clears and reads, data included)."""
    slicer.mrmlScene.Clear(1)
    assert slicer.util.getNodesByClass("vtkMRMLStorableNode") == []
    slicer.mrmlScene.SetURL(str(scene_file))
    assert slicer.mrmlScene.Connect(), f"Slicer could not read {scene_file}"


@pytest.mark.slow  # ~2 min on 2 shared CPU cores: a 1-minute fine-tune plus 8 engine starts
def test_segment_correct_retrain_segment_again_save_and_reload(scene, data_dir, fixtures_dir, tmp_path):
    from safetensors.torch import load_file

    slicer = scene
    from MedNeXtV2SegmentLib.engine_client import EngineClient
    from MedNeXtV2SegmentLib.logic import MedNeXtV2SegmentLogic
    from MedNeXtV2TrainLib.label_table import dataset_labels, default_choices
    from MedNeXtV2TrainLib.logic import MedNeXtV2TrainLogic, base_labels
    from MedNeXtV2TrainLib.scene_cases import SceneCase
    from MedNeXtV2TrainLib.settings import TrainSettings
    from MedNeXtV2TrainLib.trained_model import read_trained_model

    engine = EngineClient(python=sys.executable)  # the client both modules share
    segmentLogic, trainLogic = MedNeXtV2SegmentLogic(engine), MedNeXtV2TrainLogic(engine)
    heard = []
    engine.modelList.addListener(heard.append)  # the Segment panel's onModelList
    temp = Path(slicer.app.temporaryPath)

    # 1. A real MR scan, loaded by Slicer's Volumes logic.
    breast = slicer.app.volumesLogic.AddArchetypeVolume(str(data_dir / "mr-breast" / "breast1_image.nrrd"), "breast1")
    assert breast is not None
    scan = slicer.util.arrayFromVolume(breast).copy()

    # Import an nnU-Net v2 MedNeXt results folder: what the panel's Import button starts
    # (SegmentPanel.onImport -> startModelAction("import", path)), finished as its timer does.
    dataset = dict(dataset_json(channels={"0": "T1"}, labels={"background": 0, "gland": 1, "lesion": 2}),
                   name="Breast", description="Breast gland and lesion (MR)")
    nnunet = write_results(tmp_path / "nnUNet_results",
                           {0: load_file(str(fixtures_dir / f"{CASE}.weights.safetensors"))},
                           plans=plans_json(schemes=("ZScoreNormalization",), spacing=(2.1, 3.0, 3.0)), dataset=dataset)
    before = panel_model_ids(engine, heard)
    drive(segmentLogic, segmentLogic.startModelAction("import", str(nnunet)))
    imported = panel_model_ids(engine, heard) - before
    assert len(imported) == 1, imported
    importedId = imported.pop()
    assert engine.modelList.model(importedId).labels == ("gland", "lesion")

    first = segmentLogic.segment(breast, importedId, device="cpu", tta=False)
    assert set(segments_by_name(first)) <= {"gland", "lesion"} and segments_by_name(first)
    # a loaded result is not tied to the run folder it was read from (deleted after the run)
    assert first.GetStorageNode() is None or not inside(first.GetStorageNode().GetFileName(), temp), \
        first.GetStorageNode().GetFileName()

    # 2. Correct it as a user does: erase half of the larger segment, paint a block of the other.
    ids = segments_by_name(first)
    sizes = {name: int(slicer.util.arrayFromSegmentBinaryLabelmap(first, ids[name], breast).sum()) for name in ids}
    erased = max(sizes, key=sizes.get)
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(first, ids[erased], breast)
    assert mask.shape == scan.shape
    mask[:, :, : mask.shape[2] // 2] = 0
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, first, ids[erased], breast)
    painted_name = "lesion" if erased == "gland" else "gland"
    if painted_name not in ids:
        ids[painted_name] = first.GetSegmentation().AddEmptySegment("", painted_name)
    paint = slicer.util.arrayFromSegmentBinaryLabelmap(first, ids[painted_name], breast)
    paint[8:14, 50:70, 30:40] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(paint, first, ids[painted_name], breast)
    corrected = {name: slicer.util.arrayFromSegmentBinaryLabelmap(first, ids[name], breast).astype(bool)
                 for name in (erased, painted_name)}
    assert not corrected[erased][:, :, : mask.shape[2] // 2].any() and corrected[erased].any()
    assert corrected[painted_name][8:14, 50:70, 30:40].all()

    # A second real case: another patient's MR with its lesion drawn (a label map made a segmentation).
    brain = slicer.app.volumesLogic.AddArchetypeVolume(str(data_dir / "mr-brain-lesion" / "brain1_image.nrrd"), "brain1")
    brainLabel = slicer.app.volumesLogic.AddArchetypeVolume(
        str(data_dir / "mr-brain-lesion" / "brain1_label.nrrd"), "brain1_label", 1)  # 1: as a label map
    brainSegmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "brain1 lesion")
    assert slicer.app.segmentationsLogic.ImportLabelmapToSegmentationNode(brainLabel, brainSegmentation)
    for node in (brainLabel.GetDisplayNode(), brainLabel.GetStorageNode(), brainLabel):  # the label map's parts too
        slicer.mrmlScene.RemoveNode(node)
    brainSegmentation.SetReferenceImageGeometryParameterFromVolumeNode(brain)
    assert brainSegmentation.GetSegmentation().GetNumberOfSegments() == 1
    brainSegmentation.GetSegmentation().GetNthSegment(0).SetName("lesion")

    # 3. Fine-tune from the imported model: the wizard's steps through the Train logic.
    cases = [SceneCase("breast1", breast, first), SceneCase("brain1", brain, brainSegmentation)]
    problems, union, _ = trainLogic.checkCases(cases)
    assert not [p for p in problems if p.severity == "error"], problems
    baseLabels = base_labels(engine.modelList.model(importedId))
    labels = dataset_labels(union, default_choices(union, baseLabels), baseLabels)
    assert [(label.name, label.from_base) for label in labels] == [("gland", True), ("lesion", True)]
    settings = TrainSettings(model_name="Breast improved", base_model=importedId, modality="MR", minutes=1,
                             epochs=None, patch_size=None, device="cpu", seed=1)
    jobsRoot = tmp_path / "training"
    jobDir, state = trainLogic.createJob(settings, jobsRoot, cases, labels)
    # the correction is what the model learns: the exported label map is the corrected segmentation
    exported = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(state.dataset) / "labelsTr" / "breast1.nrrd")))
    value = {label.name: label.value for label in labels}
    expected = np.zeros(exported.shape, np.uint8)
    for name in sorted(corrected, key=value.get):  # the higher value wins where segments overlap
        expected[corrected[name]] = value[name]
    assert set(ids) == set(corrected)
    np.testing.assert_array_equal(exported, expected)
    run = trainLogic.startTraining(jobDir, state)
    started = time.monotonic()
    assert run.wait(timeout=TRAIN_TIMEOUT_S) == "finished", run.outcome() + "\n" + "\n".join(run.log)
    print(f"fine-tune, 1-minute budget: {time.monotonic() - started:.0f} s")
    trained = read_trained_model(Path(run.state.output_bundle))
    assert trained.labels == ("gland", "lesion")
    from mednextv2.bundle import load_bundle

    assert load_bundle(trained.path).spec.provenance.base_model == importedId

    # Register it as the Finish page does: TrainLogic.startRegistration, polled to the end, finished.
    listed_before = panel_model_ids(engine, heard)
    assert trained.id not in listed_before
    registration = trainLogic.startRegistration(trained.path)
    deadline = time.monotonic() + ENGINE_TIMEOUT_S
    while not trainLogic.pollRegistration(registration):
        assert time.monotonic() < deadline, "registration did not finish"
        time.sleep(0.1)
    assert registration.returncode == 0, "\n".join(registration.stderr_tail)
    trainLogic.finishRegistration(registration)
    trainLogic.markRegistered(jobDir, trained.id)
    # The Segment list shows the new model without Refresh: the registration must not leave the
    # shared list as it was before the model existed.
    heard.clear()
    assert trained.id in panel_model_ids(engine, heard)

    # Segment again, with the new model, and Show uncertainty: the map comes under the result.
    second = segmentLogic.segment(breast, trained.id, device="cpu", tta=False, uncertainty=True)
    assert second is not first and segments_by_name(second) and trained.title in second.GetName()
    assert set(segments_by_name(second)) <= {"gland", "lesion"}
    uncertainty = slicer.util.getFirstNodeByClassByName("vtkMRMLScalarVolumeNode", f"{second.GetName()} uncertainty")
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    assert shNode.GetItemParent(shNode.GetItemByDataNode(uncertainty)) == shNode.GetItemByDataNode(second)
    assert uncertainty.GetImageData().GetDimensions() == breast.GetImageData().GetDimensions()
    assert uncertainty.GetStorageNode() is None  # saved below into the scene's folder, like the result
    # not tied to its run folder either
    assert second.GetStorageNode() is None or not inside(second.GetStorageNode().GetFileName(), temp)
    assert not any(temp.iterdir()), f"run folders left behind: {sorted(p.name for p in temp.iterdir())}"

    # 4. Save as Slicer does, clear, read back.
    saved, firstName = {}, first.GetName()
    for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
        saved[node.GetName()] = ("volume", slicer.util.arrayFromVolume(node).copy())
    for node in slicer.util.getNodesByClass("vtkMRMLSegmentationNode"):
        saved[node.GetName()] = ("segmentation", {name: slicer.util.arrayFromSegmentBinaryLabelmap(
            node, segmentId, breast if node in (first, second) else brain).astype(bool)
            for name, segmentId in segments_by_name(node).items()})
    assert set(saved) == {"breast1", "brain1", first.GetName(), second.GetName(), "brain1 lesion",
                          uncertainty.GetName()}, set(saved)
    reference = {first.GetName(): "breast1", second.GetName(): "breast1", "brain1 lesion": "brain1"}
    parameters = trainLogic.getParameterNode().GetParameter("TrainSettings")
    kept = [(n.GetClassName(), n.GetName()) for n in slicer.util.getNodes("*").values() if n.GetSaveWithScene()]

    folder = tmp_path / "saved scene"
    scene_file = save_scene_as_slicer_does(slicer, folder)
    text = scene_file.read_text(encoding="utf-8")
    assert str(tmp_path) not in text, "the .mrml must name its files relative to its folder"
    read_scene_back(slicer, scene_file)

    found = {(n.GetClassName(), n.GetName()) for n in slicer.util.getNodes("*").values()}
    assert set(kept) <= found, f"not read back: {sorted(set(kept) - found)}"
    named = [unquote(name) for name in re.findall(r'\bfileName="([^"]*)"', text)]
    assert len(named) == len(saved) and not [name for name in named if Path(name).is_absolute()], named
    files = storage_files(slicer)
    assert set(files) == set(saved), files
    for name, file in files.items():  # not in the temporary folder, a run folder, the model cache...
        assert inside(file, folder), f"{name} is read from {file}, outside the saved scene's folder"
        assert Path(file).is_file(), file
    for name, (kind, content) in saved.items():
        node = slicer.util.getFirstNodeByClassByName(CLASSES[kind], name)
        assert node is not None, f"{name} did not come back"
        if kind == "volume":
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), content, err_msg=name)
            continue
        volume = slicer.util.getFirstNodeByClassByName(CLASSES["volume"], reference[name])
        back = {n: slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentId, volume).astype(bool)
                for n, segmentId in segments_by_name(node).items()}
        assert set(back) == set(content), name
        for segment in content:
            np.testing.assert_array_equal(back[segment], content[segment], err_msg=f"{name}: {segment}")
    for segment, voxels in corrected.items():  # the user's correction survived the round trip
        np.testing.assert_array_equal(saved[firstName][1][segment], voxels, err_msg=segment)
    assert trainLogic.getParameterNode().GetParameter("TrainSettings") == parameters
