"""One SegmentOptions checks every segment option, --step is bounded
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


def _segment_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="segment")
    from mednextv2.cli.segment import add_parser

    return add_parser(parser.add_subparsers())


def test_every_option_field_is_a_segment_argument_and_back(tmp_path):
    """SegmentOptions is the one source of `segment`'s options: each field's value written as
    arguments (option_fields.option_arguments) is parsed back into the same options."""
    from mednextv2.cli.dataclass_args import dataclass_from_args
    from mednextv2.option_fields import option_arguments, option_fields
    from mednextv2.progress import null_progress

    values = dict(device="cpu", tta=False, step=0.25, fast=True, structures=("liver", "left lung"),
                  largest_component=True, tile_batch=3, threads=2, uncertainty=str(tmp_path / "u.nrrd"),
                  statistics=str(tmp_path / "s.csv"), progress="json")
    assert set(values) == set(option_fields(SegmentOptions))  # a new field is tested here too
    args = _segment_parser().parse_args(["in.nrrd", "-m", "m", "-o", "o.seg.nrrd",
                                         *option_arguments(SegmentOptions, **values)])
    assert args.progress == "json"
    options = dataclass_from_args(SegmentOptions, args, progress=null_progress)
    assert options == SegmentOptions(**dict(values, progress=null_progress))
    defaults = _segment_parser().parse_args(["in.nrrd", "-m", "m", "-o", "o.seg.nrrd"])
    assert dataclass_from_args(SegmentOptions, defaults, progress=null_progress) == SegmentOptions()
    assert defaults.progress == "bar" and defaults.tta is True


def test_a_bool_option_on_by_default_has_an_off_flag_and_they_exclude_each_other(capsys):
    from mednextv2.option_fields import option_arguments

    assert option_arguments(SegmentOptions, tta=False, fast=False) == ["--no-tta"]
    assert option_arguments(SegmentOptions, tta=True, structures=()) == ["--tta"]
    with pytest.raises(SystemExit):
        _segment_parser().parse_args(["in.nrrd", "-m", "m", "-o", "o.seg.nrrd", "--tta", "--no-tta"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no command-line option output"):
        option_arguments(SegmentOptions, output="o.seg.nrrd")
