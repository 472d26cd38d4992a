"""Command lines the panel builds are accepted by the engine's real argument parser."""
from __future__ import annotations

import os
import shutil
import sys

import pytest

from mednextv2.cli import build_parser
from MedNeXtV2SegmentLib.command import (build_models_command, build_segment_command, engine_environment,
                                         engine_package_dir, engine_threads, find_slicer_python)
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


def test_every_flag_the_panel_emits_is_one_the_engine_takes_for_that_choice(tmp_path):
    """SegmentChoices and build_segment_command name the engine's options, so a renamed or removed
    engine option fails here rather than at the user's first Segment."""
    import dataclasses

    from mednextv2.inference.options import SegmentOptions
    from mednextv2.option_fields import option_fields

    # Every panel choice but the model is a SegmentOptions option of the same name.
    assert {f.name for f in dataclasses.fields(SegmentChoices)} - {"model"} <= set(option_fields(SegmentOptions))
    segment = build_parser()._subparsers._group_actions[0].choices["segment"]
    accepted = {flag for action in segment._actions for flag in action.option_strings}
    everything = SegmentChoices(model="m", device="cpu", tta=False, fast=True, step=0.5, structures=("a",),
                                uncertainty=True)
    for options in (everything, SegmentChoices(model="m")):
        command = build_segment_command("py", ["a.nrrd"], "o.seg.nrrd", options, threads=2,
                                        uncertainty=tmp_path / "u.nrrd", statistics=tmp_path / "s.json")
        flags = [word for word in command[3:] if word.startswith("-")]
        assert flags and set(flags) <= accepted, set(flags) - accepted
    args = parse(command)
    assert (args.threads, args.uncertainty, args.statistics) == (2, None, str(tmp_path / "s.json"))
    args = parse(build_segment_command("py", ["a.nrrd"], "o.seg.nrrd", everything, uncertainty=tmp_path / "u.nrrd"))
    assert (args.tta, args.fast, args.step, args.structures, args.uncertainty) == (
        False, True, 0.5, ["a"], str(tmp_path / "u.nrrd"))


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
    (SegmentChoices(model="m", step=0.05), r"--step must be in \[0.1, 1\]"),  # the engine's rule, not (0, 1]
    (SegmentChoices(model="m", structures=("--fast",)), "structure"),
    (SegmentChoices(model="m", structures=(" ",)), "structure"),
])
def test_invalid_options_are_rejected_with_the_option_named(options, message):
    with pytest.raises(ParameterError, match=message):
        build_segment_command("py", ["a.nrrd"], "o.seg.nrrd", options)


class _Combo:
    def __init__(self, data):
        self.currentData = data

    def findData(self, data):
        return 0 if data == self.currentData else -1

    def setCurrentIndex(self, index):
        pass


class _Item:
    def __init__(self, text):
        self._text = text

    def text(self):
        return self._text

    def checkState(self):
        return "checked"


class _List:
    count = 1

    def item(self, i):
        return _Item("lesion")


def test_the_panels_options_carry_a_saved_step_to_the_command(tmp_path, monkeypatch):
    """The panel has no step control: a scene saved with step 0.25 must still run with --step 0.25.

    Only the panel's two methods run here (the Qt panel itself needs Slicer): on stand-in widgets
    and a `qt` module that has just what they touch."""
    import types

    import slicer_stubs
    slicer_stubs.install(str(tmp_path / "slicer-temp"))
    fake_qt = types.ModuleType("qt")
    fake_qt.Qt = types.SimpleNamespace(Checked="checked", Unchecked="unchecked")
    monkeypatch.setitem(sys.modules, "qt", fake_qt)
    try:
        from MedNeXtV2SegmentLib.widget import SegmentPanel
        panel = types.SimpleNamespace(fillStructures=lambda selected: None, ui=types.SimpleNamespace(
            modelSelector=_Combo("lung"), deviceSelector=_Combo("cpu"), ttaCheckBox=types.SimpleNamespace(checked=False),
            fastCheckBox=types.SimpleNamespace(checked=False), structuresList=_List(),
            showUncertaintyCheckBox=types.SimpleNamespace(checked=True)))
        SegmentPanel.setOptions(panel, SegmentChoices(model="lung", device="cpu", tta=False, step=0.25))
        options = SegmentPanel.options(panel)
    finally:
        sys.modules.pop("MedNeXtV2SegmentLib.widget", None)
        slicer_stubs.uninstall()
    assert options == SegmentChoices(model="lung", device="cpu", tta=False, step=0.25)
    args = parse(build_segment_command("py", ["a.nrrd"], "o.seg.nrrd", options))
    assert args.step == 0.25


def test_no_input_is_rejected():
    with pytest.raises(ValueError, match="input"):
        build_segment_command("py", [], "o.seg.nrrd", SegmentChoices(model="m"))


def test_options_json_round_trip_and_tolerance():
    options = SegmentChoices(model="m", device="cpu", tta=False, fast=True, step=0.5, structures=("a", "b"))
    assert SegmentChoices.from_json(options.to_json()) == options
    assert SegmentChoices.from_json("") == SegmentChoices()
    newer = '{"model": "m", "device": "mps", "structures": ["x"], "added_in_v9": 1}'
    assert SegmentChoices.from_json(newer) == SegmentChoices(model="m", device="mps", structures=("x",))
    for unusable in ("[1]", "{", '{"device": "gpu"}', '{"tta": true, "structures": 5}'):
        assert SegmentChoices.from_json(unusable) == SegmentChoices()  # defaults, with a warning
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


SHADOW_CHECK = """
import os, sys
sys.path.insert(0, {shadow!r})               # a pip-installed mednextv2, found before the modules
sys.path.append({lib_parent!r})              # Slicer *appends* the module folder
import mednextv2
assert mednextv2.__file__.startswith({shadow!r}), "the shadow must win without the fix"
from MedNeXtV2SegmentLib.command import engine_environment, engine_package_dir, use_shipped_engine
folder = use_shipped_engine()
import mednextv2
print(os.path.dirname(os.path.dirname(mednextv2.__file__)))
print(engine_environment({{"PYTHONPATH": {shadow!r}}})["PYTHONPATH"].split(os.pathsep)[0])
print(folder)
"""


def test_a_pip_installed_mednextv2_never_shadows_the_shipped_engine(tmp_path):
    """Panel and child process both use the engine beside the module files."""
    import subprocess

    shadow = tmp_path / "site-packages"
    (shadow / "mednextv2").mkdir(parents=True)
    (shadow / "mednextv2" / "__init__.py").write_text("SHADOW = True\n")
    lib_parent = str(engine_package_dir().parent / "MedNeXtV2Segment")
    script = SHADOW_CHECK.format(shadow=str(shadow), lib_parent=lib_parent)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 0, out.stderr
    shipped = str(engine_package_dir())
    assert out.stdout.split() == [shipped, shipped, shipped]


def test_engine_folder_of_an_installed_extension(tmp_path):
    """Installed: the engine is copied beside the module files (qt-scripted-modules)."""
    modules = tmp_path / "qt-scripted-modules"
    (modules / "mednextv2").mkdir(parents=True)
    (modules / "mednextv2" / "__init__.py").write_text("")
    (modules / "MedNeXtV2SegmentLib").mkdir()
    assert engine_package_dir(str(modules / "MedNeXtV2SegmentLib" / "command.py")) == modules
    (modules / "mednextv2" / "__init__.py").unlink()
    with pytest.raises(RuntimeError, match="engine is missing.*Reinstall"):
        engine_package_dir(str(modules / "MedNeXtV2SegmentLib" / "command.py"))


def test_engine_threads_leave_one_core_to_slicer():
    assert [engine_threads(n) for n in (1, 2, 4, 16)] == [1, 1, 3, 15]
    assert 1 <= engine_threads() <= max(1, os.cpu_count() - 1)
    args = build_segment_command("py", ["a.nrrd"], "o.seg.nrrd", SegmentChoices(model="m"), threads=3)
    assert args[args.index("--threads") + 1] == "3" and args[-2:] == ["--progress", "json"]
