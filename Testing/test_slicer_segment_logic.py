"""MedNeXtV2SegmentLogic's export -> run -> load -> label flow on real MRML (slicer-core), with the
engine replaced by a script, for what the real engine cannot be made to do on demand.

The script honours the engine's command line: it reads the exported input, writes a real
.seg.nrrd with the engine's own writer (mednextv2.inference.export), prints JSON progress, and exits with
the code it is told to (or hangs, to be cancelled). The logic's process runner is injected, as
the Slicer module allows. Slicer is the real core plus Testing/slicer_stubs.py's app stand-in;
the same flow with the real engine is in test_slicer_segment_mrml.py.
"""
from __future__ import annotations

import sys
import textwrap

import pytest

import slicer_stubs
from MedNeXtV2SegmentLib.parameters import SegmentChoices
from MedNeXtV2SegmentLib.process import EngineProcess, ExitCode
from MedNeXtV2SegmentLib.tinybundle import make_tiny_bundle

FAKE_ENGINE = textwrap.dedent("""
    import json, sys, time
    import SimpleITK as sitk
    from mednextv2.bundle import load_bundle
    from mednextv2.inference.export import write_result
    argv = sys.argv[1:]
    assert argv[:3] == ["-m", "mednextv2", "segment"], argv
    args = argv[3:]
    inputs = args[:args.index("-m")]
    model, output = args[args.index("-m") + 1], args[args.index("-o") + 1]
    print(json.dumps({"stage": "predict", "fraction": 0.5, "eta_s": 1.0, "message": "tile 1/2"}), flush=True)
    print("INFO engine log line", file=sys.stderr, flush=True)
    if MODE == "fail":
        print("mednextv2: error: input image is empty", file=sys.stderr)
        sys.exit(2)
    if MODE == "hang":  # until the stop file appears, as the engine checks it at each tile
        import os
        for _ in range(1200):
            if os.path.exists(os.environ["MEDNEXTV2_STOP_FILE"]):
                sys.exit(130)
            time.sleep(0.05)
    image = sitk.ReadImage(inputs[0])
    labels = sitk.Cast(image > 100, sitk.sitkUInt8) * 2  # label 2 where bright
    write_result(labels, load_bundle(model).labels, output)
    print(json.dumps({"stage": "export", "fraction": 1.0, "eta_s": 0.0, "message": output}), flush=True)
""")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


def make_logic(mode="ok"):
    from MedNeXtV2SegmentLib.engine_client import EngineClient
    from MedNeXtV2SegmentLib.logic import MedNeXtV2SegmentLogic

    launched = []

    def factory(args, env, cwd):
        launched.append(list(args))
        assert args[1:4] == ["-m", "mednextv2", "segment"]
        script = f"MODE = {mode!r}\n" + FAKE_ENGINE
        return EngineProcess([sys.executable, "-c", script, *args[1:]], env=env, cwd=cwd)

    return MedNeXtV2SegmentLogic(EngineClient(python="PythonSlicer", processFactory=factory)), launched


@pytest.fixture
def volume(slicer, data_dir):
    """The breast MR read by Slicer's Volumes logic, under a transform, in a study."""
    volume = slicer_stubs.load_volume(data_dir / "mr-breast" / "breast1_image.nrrd", "Breast MR")
    volume.SetAndObserveTransformNodeID(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode").GetID())
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    study = shNode.CreateStudyItem(shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Patient"), "Study")
    shNode.SetItemParent(shNode.GetItemByDataNode(volume), study)
    return volume


def segments(node):
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]


def test_segment_loads_names_colours_terminology_geometry_and_placement(slicer, volume, bundle):
    logic, launched = make_logic()
    progress = []
    node = logic.segment(volume, str(bundle), device="cpu", tta=False, onProgress=progress.append)
    command = launched[0]
    assert command[0] == "PythonSlicer" and "--no-tta" in command and command[command.index("--device") + 1] == "cpu"
    assert command[command.index("-m", 3) + 1] == str(bundle)
    assert [e.stage for e in progress] == ["predict", "export"]

    found = segments(node)
    assert [(s.GetName(), s.GetLabelValue()) for s in found] == [("lesion", 1), ("tissue", 2)]
    assert found[1].GetColor() == pytest.approx((0.0, 200 / 255, 100 / 255))
    assert "SCT^85756007^Tissue" in found[1].GetTerminology()
    assert node.GetName() == "Breast MR - Self-test tiny model"
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is volume
    assert node.GetTransformNodeID() == volume.GetTransformNodeID() is not None
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    assert shNode.GetItemParent(shNode.GetItemByDataNode(node)) == shNode.GetItemParent(shNode.GetItemByDataNode(volume))
    assert node.GetDisplayNode() is not None
    assert list(slicer_stubs.Path(slicer.app.temporaryPath).iterdir()) == [], "the run folder is removed after success"
    assert slicer.app.events > 0, "the blocking call keeps Slicer's event loop running"


def test_existing_output_node_receives_the_segments(slicer, volume, bundle):
    from MedNeXtV2SegmentLib.logic import MedNeXtV2SegmentLogic  # noqa: F401

    target = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "My segmentation")
    logic, _ = make_logic()
    node = logic.segment(volume, str(bundle), outputNode=target, tta=False)
    assert node is target and [s.GetName() for s in segments(target)] == ["lesion", "tissue"]
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1


def test_engine_failure_keeps_files_and_reports_stderr(slicer, volume, bundle):
    from MedNeXtV2SegmentLib.logic import EngineError

    logic, _ = make_logic("fail")
    with pytest.raises(EngineError) as info:
        logic.segment(volume, str(bundle))
    error = info.value
    assert error.exitCode == ExitCode.BAD_INPUT and "rejected the input" in str(error)
    assert "input image is empty" in error.stderrTail
    assert error.workDir.is_dir() and (error.workDir / "input_0000.nrrd").is_file()
    assert str(error.workDir) in str(error)
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_cancel_stops_and_cleans_up(slicer, volume, bundle):
    """Cancel returns at once; polling (the panel's timer) sees the engine stop, then finish() says
    Cancelled and the run's folder is gone. Every wait is bounded: a regression fails, never hangs."""
    import time

    from MedNeXtV2SegmentLib.logic import EngineError

    logic, _ = make_logic("hang")
    run = logic.start(volume, SegmentChoices(model=str(bundle)))
    log = []
    deadline = time.monotonic() + 30
    while not any(l.startswith("INFO engine") for l in log):
        assert time.monotonic() < deadline, f"the engine never started: {log}"
        logic.poll(run, onLog=log.append)
        time.sleep(0.02)
    started = time.monotonic()
    logic.cancel(run)
    assert time.monotonic() - started < 0.5, "cancel blocked the GUI thread"
    deadline = time.monotonic() + 10  # inside the grace period: the stop request alone did it
    while not logic.poll(run):
        assert time.monotonic() < deadline, "the engine did not stop"
        time.sleep(0.05)
    with pytest.raises(EngineError, match="Cancelled"):
        logic.finish(run)
    assert not run.process.is_running() and not run.paths.work_dir.exists()


def test_bad_requests_fail_before_anything_runs(slicer, volume, bundle):
    from MedNeXtV2SegmentLib.labels import LabelTableError
    from MedNeXtV2SegmentLib.logic import EngineError

    logic, launched = make_logic()
    with pytest.raises(EngineError, match="needs 1 input volume"):
        logic.start([volume, volume], SegmentChoices(model=str(bundle)))
    with pytest.raises(LabelTableError, match="unknown structure.*liver"):
        logic.start(volume, SegmentChoices(model=str(bundle), structures=("liver",)))
    with pytest.raises(EngineError, match="Select an input volume"):
        logic.start(None, SegmentChoices(model=str(bundle)))
    assert launched == []
    assert list((slicer_stubs.Path(slicer.app.temporaryPath)).glob("*")) == []  # no run folder left


def test_options_are_saved_in_the_parameter_node(slicer):
    logic, _ = make_logic()
    options = SegmentChoices(model="lung", device="cpu", structures=("tumor",))
    logic.saveOptions(options)
    assert logic.loadOptions() == options
    node = slicer.mrmlScene.GetSingletonNode("MedNeXtV2Segment", "vtkMRMLScriptedModuleNode")
    assert node is logic.getParameterNode() and node.GetParameter("SegmentOptions") == options.to_json()


def save_as_the_save_dialog_does(node, folder):
    """Slicer's Save dialog on one node with a new folder chosen (v5.6.2 to main):
    qSlicerSaveDataDialogPrivate::nodeFileInfo keeps an existing storage node's directory and
    only renames the file after the node; a node without one gets a default storage node and
    the chosen folder. qSlicerCoreIOManager::saveNodes then creates missing folders, and the
    node writer writes through the storage node. Returns the file written."""
    import os
    from pathlib import Path

    safe_name = "".join(c if c not in '\\/:*?"<>|' else "_" for c in node.GetName())
    storage = node.GetStorageNode()
    if storage is None:
        assert node.AddDefaultStorageNode()
        storage = node.GetStorageNode()
        storage.SetFileName(str(Path(folder) / (safe_name + "." + storage.GetDefaultWriteFileExtension())))
    elif storage.GetFileName():
        storage.SetFileName(str(Path(storage.GetFileName()).parent / (safe_name + storage.GetSupportedFileExtension())))
    else:
        storage.SetFileName(str(Path(folder) / (safe_name + "." + storage.GetDefaultWriteFileExtension())))
    written = Path(storage.GetFileName())
    os.makedirs(written.parent, exist_ok=True)
    assert storage.WriteData(node)
    return written


def test_result_keeps_no_file_name_in_the_run_folder(slicer, volume, bundle, tmp_path):
    """The run folder is deleted after loading: a result still naming a file there would be saved
    into the temp folder by Slicer's Save dialog, and lost at the next temp cleanup."""
    from pathlib import Path

    logic, _ = make_logic()
    node = logic.segment(volume, str(bundle), tta=False)
    temp = Path(slicer.app.temporaryPath).resolve()
    storage = node.GetStorageNode()
    if storage is not None and storage.GetFileName():
        assert temp not in Path(storage.GetFileName()).resolve().parents, storage.GetFileName()
    assert node.GetModifiedSinceRead(), "the Save dialog must tick the result"

    written = save_as_the_save_dialog_does(node, tmp_path / "my study")
    assert written.resolve().parent == (tmp_path / "my study").resolve() and written.is_file()
    assert [p for p in temp.rglob("*") if p.is_file()] == [], "nothing is written into the temp folder"
    reloaded = slicer.util.loadSegmentation(str(written))
    assert [s.GetName() for s in segments(reloaded)] == ["lesion", "tissue"]
