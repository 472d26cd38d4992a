"""Command lines the panel builds are accepted by the engine's real argument parser."""
from __future__ import annotations

import os
import shutil
import sys

import pytest

import slicer_segment_paths  # noqa: F401
from mednextv2.cli import build_parser
from MedNeXtV2SegmentLib.command import (build_models_command, build_segment_command, engine_environment,
                                         engine_package_dir, find_slicer_python)
from MedNeXtV2SegmentLib.parameters import ParameterError, SegmentChoices


def parse(command):
    assert command[:3] == ["py", "-m", "mednextv2"]
    return build_parser().parse_args(command[3:])


def test_segment_command_round_trips_through_the_cli_parser(tmp_path):
    inputs = [tmp_path / "input_0000.nrrd", tmp_path / "input_0001.nrrd"]
    options = SegmentChoices(model=str(tmp_path / "bundle"), device="cuda", tta=False, fast=True, step=0.25,
                             structures=("left lung", "tumor"))
    args = parse(build_segment_command("py", inputs, tmp_path / "out.seg.nrrd", options))
    assert args.command == "segment"
    assert args.inputs == [str(p) for p in inputs]
    assert (args.model, args.output) == (str(tmp_path / "bundle"), str(tmp_path / "out.seg.nrrd"))
    assert (args.device, args.tta, args.fast, args.step) == ("cuda", False, True, 0.25)
    assert args.structures == ["left lung", "tumor"] and args.progress == "json"


def test_defaults_leave_the_bundle_in_charge():
    args = parse(build_segment_command("py", ["a.nrrd"], "o.seg.nrrd", SegmentChoices(model="lung-tumor-ct")))
    assert (args.device, args.tta, args.fast, args.step, args.structures) == ("auto", True, False, None, None)


@pytest.mark.parametrize("action, extra, expected", [
    ("list", ["--json"], {"action": "list", "json": True}),
    ("download", ["lung-tumor-ct"], {"action": "download", "id": "lung-tumor-ct"}),
    ("import", ["/data/my model.zip"], {"action": "import", "path": "/data/my model.zip"}),
])
def test_models_commands_parse(action, extra, expected):
    args = parse(build_models_command("py", action, *extra))
    assert args.progress == "json"
    for key, value in expected.items():
        assert getattr(args, key) == value
    with pytest.raises(ValueError):
        build_models_command("py", "remove", "x")


@pytest.mark.parametrize("options, message", [
    (SegmentChoices(), "No model selected"),
    (SegmentChoices(model="m", device="gpu"), "device"),
    (SegmentChoices(model="m", step=0.0), "step"),
    (SegmentChoices(model="m", step=1.5), "step"),
    (SegmentChoices(model="m", structures=("--fast",)), "structure"),
    (SegmentChoices(model="m", structures=(" ",)), "structure"),
])
def test_invalid_options_are_rejected_with_the_option_named(options, message):
    with pytest.raises(ParameterError, match=message):
        build_segment_command("py", ["a.nrrd"], "o.seg.nrrd", options)


def test_no_input_is_rejected():
    with pytest.raises(ValueError, match="input"):
        build_segment_command("py", [], "o.seg.nrrd", SegmentChoices(model="m"))


def test_options_json_round_trip_and_tolerance():
    options = SegmentChoices(model="m", device="cpu", tta=False, fast=True, step=0.5, structures=("a", "b"))
    assert SegmentChoices.from_json(options.to_json()) == options
    assert SegmentChoices.from_json("") == SegmentChoices()
    newer = '{"model": "m", "device": "mps", "structures": ["x"], "added_in_v9": 1}'
    assert SegmentChoices.from_json(newer) == SegmentChoices(model="m", device="mps", structures=("x",))
    with pytest.raises(ParameterError):
        SegmentChoices.from_json("[1]")
    with pytest.raises(ParameterError):
        SegmentChoices.from_json("{")
    assert options.with_changes(structures=["c"]).structures == ("c",)


def test_engine_environment_prepends_the_package_folder(tmp_path):
    base = {"PYTHONPATH": os.pathsep.join(["/x", str(tmp_path)]), "HOME": "/home/u"}
    env = engine_environment(base, tmp_path)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), "/x"]
    assert env["PYTHONUNBUFFERED"] == "1" and env["HOME"] == "/home/u"
    assert base["PYTHONPATH"].startswith("/x")  # the caller's mapping is not modified
    assert (engine_package_dir() / "mednextv2" / "__init__.py").is_file()
    if shutil.which("PythonSlicer") is None:  # outside Slicer: this interpreter
        assert find_slicer_python() == sys.executable
