"""One SegmentOptions checks every segment option (issue 14), and issue 11 row 17: --step is bounded
and the tile plan's memory is checked before any tile runs, with a message that says what to change."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

import mednextv2
from mednextv2.cli import main
from mednextv2.errors import InputError, ResourceError
from mednextv2.inference.options import MIN_STEP, SegmentOptions
from mednextv2.inference.sliding_window import plan_tiles, tile_grid
from segment_fixtures import one_torch_thread, threshold_bundle  # noqa: F401


@pytest.fixture(scope="module")
def unmirrored_model(tmp_path_factory):
    return threshold_bundle((300.0,), mirror_axes=()).save(tmp_path_factory.mktemp("m") / "model")


@pytest.fixture()
def scan(tmp_path, data_dir):
    """A crop of the real lung CT (int16 HU), 64x64x8 voxels."""
    image = sitk.ReadImage(str(data_dir / "ct-lung" / "lung1_image.nrrd"))[200:264, 200:264, 20:28]
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("step", ["0.001", "0.05", "0", "1.5", "nan"])
def test_step_outside_the_bound_is_exit_2_and_nothing_is_written(tmp_path, scan, unmirrored_model, step, capsys):
    out = tmp_path / "out"
    out.mkdir()
    rc = main(["segment", str(scan), "-m", str(unmirrored_model), "-o", str(out / "r.seg.nrrd"), "--device", "cpu",
               "--step", step, "--progress", "none"])
    assert rc == 2 and f"--step must be in [{MIN_STEP}, 1]" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_python_api_applies_the_same_bound(scan, unmirrored_model):
    with pytest.raises(InputError, match="--step"):
        mednextv2.segment(str(scan), str(unmirrored_model), device="cpu", step=0.05)
    assert SegmentOptions(step=0.1).step == 0.1 and SegmentOptions(step=1).step == 1.0


@pytest.mark.parametrize("kwargs, word", [
    ({"device": "gpu"}, "device"), ({"tile_batch": 0}, "tile-batch"), ({"tile_batch": 1.5}, "tile-batch"),
    ({"structures": ("",)}, "structure"), ({"structures": ("--fast",)}, "structure"), ({"progress": 3}, "progress"),
])
def test_every_option_is_checked_by_the_options_object(kwargs, word):
    with pytest.raises(InputError, match=word):
        SegmentOptions(**kwargs)


def test_options_normalise_what_they_accept():
    options = SegmentOptions(device="cuda:1", structures=["liver", "spleen"])
    assert options.structures == ("liver", "spleen") and options.device == "cuda:1"
    assert SegmentOptions(structures="liver").structures == ("liver",)
    assert SegmentOptions(structures=()).structures is None


def test_tile_plan_counts_the_tiles_the_grid_runs():
    for shape, patch, step in [((40, 200, 180), (16, 64, 64), 0.5), ((33, 97, 64), (32, 32, 32), 0.1)]:
        plan = plan_tiles(shape, patch, step, n_classes=3, buffers_on_host=True)
        assert plan.n_tiles == len(tile_grid(shape, patch, step))
        assert plan.host_bytes == 72 * plan.n_tiles + (2 * 3 + 4) * int(np.prod(shape))


def test_a_tile_plan_larger_than_the_memory_left_is_refused_before_running(tmp_path, scan, unmirrored_model,
                                                                           monkeypatch, capsys):
    ran = []
    monkeypatch.setattr("mednextv2.inference.sliding_window.available_ram_bytes", lambda: 100_000)
    monkeypatch.setattr("mednextv2.inference.sliding_window.SlidingWindowPredictor._predict_tiles",
                        lambda *a: ran.append(1))
    out = tmp_path / "out"
    out.mkdir()
    rc = main(["segment", str(scan), "-m", str(unmirrored_model), "-o", str(out / "r.seg.nrrd"), "--device", "cpu",
               "--step", "0.1", "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 3 and ran == [] and list(out.iterdir()) == []
    assert "tiles of 16x32x32 at step 0.1" in err and "GiB" in err and "--step" in err and "--fast" in err
    with pytest.raises(ResourceError, match="tile plan needs"):
        mednextv2.segment(str(scan), str(unmirrored_model), device="cpu")


def test_out_of_memory_without_a_message_still_says_what_ran_out(scan, unmirrored_model, monkeypatch):
    def no_memory(self, data, state, sink=None):
        raise MemoryError()

    monkeypatch.setattr("mednextv2.inference.sliding_window.SlidingWindowPredictor._run", no_memory)
    with pytest.raises(ResourceError) as e:
        mednextv2.segment(str(scan), str(unmirrored_model), device="cpu")
    assert "(MemoryError)" in str(e.value) and "()" not in str(e.value)
