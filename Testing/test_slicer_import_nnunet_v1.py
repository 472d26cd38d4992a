"""The Segment panel's "Import model..." path with an nnU-Net v1 MedNeXt training.

The button starts `MedNeXtV2SegmentLogic.startModelAction("import", folder)`: the real engine in a
child process (EngineProcess), polled as the panel's timer does. Here it imports the v1 results
folder of Testing/fixtures/nnunet-v1 (made with the official code), the model list the panel reads
is refreshed, and the fixture scan read by Slicer's Volumes logic is segmented through the module
logic; Slicer's own export of the segment must match the labels v1's predictor wrote.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import SimpleITK as sitk

import slicer_stubs

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "nnunet-v1"


pytestmark = pytest.mark.usefixtures("home")  # MEDNEXTV2_HOME: the engine child inherits it


def test_import_button_path_accepts_v1_folder_and_segments_like_the_official_network(slicer, tmp_path):
    from MedNeXtV2SegmentLib.logic import MedNeXtV2SegmentLogic

    logic = MedNeXtV2SegmentLogic()
    logic.engine.modelList.choices = []  # a list read before the import: the import must make the panel read it again
    run = logic.startModelAction("import", str(FIXTURE / "nnUNet"))  # what onImport starts
    stages, deadline = [], time.monotonic() + 300
    while not logic.poll(run, lambda e: stages.append(e.stage)):
        assert time.monotonic() < deadline, "the import did not finish"
        time.sleep(0.05)
    assert logic.finish(run) is None, "\n".join(run.log)
    assert "import" in stages  # progress reached the panel as JSON lines
    assert logic.engine.modelList.choices is None

    choices = {c.id: c for c in logic.refreshModels()}  # what the panel's selector lists
    assert list(choices) == ["lungtiny"]
    choice = choices["lungtiny"]
    assert choice.downloaded and Path(choice.path) == tmp_path / "home" / "models" / "lungtiny"
    assert (choice.modality, choice.labels, choice.channels) == ("CT", ("label_1",), (("CT", "CT"),))

    volume = slicer_stubs.load_volume(FIXTURE / "lung1_crop.nrrd", "Lung crop")
    node = logic.segment(volume, "lungtiny", device="cpu", tta=False)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    assert segmentation.GetNthSegment(0).GetLabelValue() == 1
    got = slicer_stubs.export_segment(node, segmentation.GetNthSegmentID(0), volume)

    official = sitk.ReadImage(str(FIXTURE / "v1_labels.nii.gz"))
    slicer_stubs.assert_on_volume_grid(official, volume, "v1 labels")  # the same grid, so voxels compare 1:1
    want = sitk.GetArrayFromImage(official) == 1
    assert got.shape == want.shape
    assert 0.2 < want.mean() < 0.8  # both labels present: the comparison can fail
    assert (got == want).mean() >= 0.999
