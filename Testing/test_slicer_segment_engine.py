"""End to end outside Slicer: the panel's command, runner and parser drive the real engine.

What the Slicer logic does between export and load, on a real MR scan (the tiny 45x120x21 breast
case) with the self-test's rigged bundle: the result must lie on the input grid, with the
bundle's segment names, and a cancel must stop the engine without leaving an output.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from MedNeXtV2SegmentLib.command import build_segment_command, engine_environment
from MedNeXtV2SegmentLib.labels import bundle_label_table
from MedNeXtV2SegmentLib.parameters import SegmentChoices
from MedNeXtV2SegmentLib.paths import make_run_paths
from MedNeXtV2SegmentLib.process import EngineProcess, ExitCode
from MedNeXtV2SegmentLib.progress import parse_progress_line
from MedNeXtV2SegmentLib.tinybundle import make_tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


def start(image, bundle, tmp_path, **options):
    paths = make_run_paths(1, temp_root=tmp_path)
    sitk.WriteImage(sitk.ReadImage(str(image)), str(paths.inputs[0]))  # stands in for slicer.util.exportNode
    command = build_segment_command(sys.executable, paths.inputs, paths.output,
                                    SegmentChoices(model=str(bundle), device="cpu", tta=False, **options))
    return paths, EngineProcess(command, env=engine_environment()).start()


def test_segment_real_scan_through_the_runner(data_dir, bundle, tmp_path):
    image = data_dir / "mr-breast" / "breast1_image.nrrd"
    paths, process = start(image, bundle, tmp_path)
    assert process.wait(timeout=240) == ExitCode.OK, "\n".join(process.stderr_tail)
    events = [e for e in (parse_progress_line(l.text) for l in process.poll() if l.stream == "stdout") if e]
    stages = [e.stage for e in events]
    assert {"preprocess", "predict", "export"} <= set(stages), stages
    assert events[-1].fraction == 1.0

    # The panel's CPU estimate counts the same tiles as the engine (timing.py), and reads the
    # engine's own seconds per pass from its progress lines.
    from mednextv2.bundle import load_bundle
    from MedNeXtV2SegmentLib.timing import passes_per_tile, seconds_per_pass, tile_count

    spec, scan = load_bundle(bundle), sitk.ReadImage(str(image))
    predicted = [e for e in events if e.stage == "predict"]
    assert tile_count(scan.GetSize(), scan.GetSpacing(), spec.preprocessing.target_spacing,
                      spec.inference.patch_size, spec.inference.step) == predicted[-1].extra["tiles_total"]
    passes = passes_per_tile(spec.inference.mirror_axes_per_fold(len(spec.weights)), tta=False)
    rates = [r for r in (seconds_per_pass(e, passes) for e in predicted) if r is not None]
    assert rates and all(r > 0 for r in rates)  # also when one batch held every tile

    reference, result = sitk.ReadImage(str(image)), sitk.ReadImage(str(paths.output))
    assert result.GetSize() == reference.GetSize()
    np.testing.assert_allclose(result.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(result.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(result.GetDirection(), reference.GetDirection(), atol=1e-6)
    labels = sitk.GetArrayFromImage(result)
    assert (labels == 2).all(), "the rigged bundle labels every voxel 'tissue' (2)"

    header = {result.GetMetaData(k): k for k in result.GetMetaDataKeys() if k.endswith("_Name")}
    assert set(header) == {e.name for e in bundle_label_table(bundle)}
    tissue = [k for k in result.GetMetaDataKeys() if result.GetMetaData(k) == "tissue"][0].split("_")[0]
    terminology = result.GetMetaData(f"{tissue}_Tags")
    assert bundle_label_table(bundle)[1].terminology in terminology
    paths.remove()


def test_cancel_stops_the_real_engine_without_output(data_dir, bundle, tmp_path):
    paths, process = start(data_dir / "mr-breast" / "breast1_image.nrrd", bundle, tmp_path, step=0.1)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(
            l.stream == "stdout" and parse_progress_line(l.text) for l in process.poll()):
        time.sleep(0.05)
    assert process.is_running(), "the engine finished before it could be cancelled"
    process.cancel(grace_s=60.0)  # no signal within the test: the engine must stop at its next tile
    assert process.wait(timeout=30) == ExitCode.CANCELLED
    process.poll()
    assert process._proc.returncode == 130 and "stop request" in "\n".join(process.stderr_tail)
    assert not paths.output.exists()
    leftovers = [p.name for p in paths.work_dir.iterdir() if p.name != "input_0000.nrrd"]
    assert leftovers == [], f"the engine left temporary files: {leftovers}"
    paths.remove()
    assert not paths.work_dir.exists()
