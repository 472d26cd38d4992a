"""MedNeXtV2Train: presets, settings, the `mednextv2 train` command, progress, curves, resume state."""
from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest


from MedNeXtV2TrainLib.presets import TRAINING_PRESETS, get_preset  # noqa: E402
from MedNeXtV2TrainLib.resume_state import (STATE_FILE, ResumeStateError, TrainState, find_jobs,  # noqa: E402
                                            find_resumable, load_state, new_job_dir, save_state)
from MedNeXtV2TrainLib.settings import TrainSettings, model_id_from_name  # noqa: E402
from MedNeXtV2TrainLib.train_command import SettingsError, train_command  # noqa: E402
from MedNeXtV2TrainLib.train_progress import format_eta, parse_training_line  # noqa: E402


def update(**fields):
    """A progress line as the engine prints it, parsed by the Segment module's parser."""
    fields.setdefault("stage", "train")
    fields.setdefault("fraction", 0.5)
    return parse_training_line(json.dumps(fields))
from MedNeXtV2TrainLib.training_curves import TrainingCurves, to_pixels, value_range  # noqa: E402


def test_presets_set_budget_and_patch():
    quick, thorough = get_preset("quick"), get_preset("thorough")
    assert quick.minutes and quick.epochs is None and thorough.epochs and thorough.minutes is None
    for preset in TRAINING_PRESETS.values():
        assert TrainSettings().with_preset(preset.name).problems() == []
    # Quick leaves the patch to the engine's plan, which knows the device (small on a CPU).
    assert quick.patch_size is None and TrainSettings().with_preset("quick").patch_size is None
    s = TrainSettings().with_preset("standard")
    assert (s.preset, s.minutes, s.epochs, s.patch_size) == ("standard", 90, None, (96, 96, 96))
    with pytest.raises(ValueError, match="unknown training preset 'fast'"):
        get_preset("fast")
    assert TrainSettings(patch_size=(64, 40, 64)).problems() == [
        "The patch size must be three sizes divisible by 16 (z y x), got [64, 40, 64]."]


def test_command_from_scratch_with_time_budget():
    s = TrainSettings(model_name="Liver tumour", architecture="v2-tiny", device="cpu", val_fraction=0.25).with_preset("quick")
    cmd = train_command("/slicer/bin/PythonSlicer", s, "/jobs/x/dataset", "/jobs/x/model")
    assert cmd == ["/slicer/bin/PythonSlicer", "-m", "mednextv2", "train", "/jobs/x/dataset", "-o", "/jobs/x/model",
                   "--preset", "v2-tiny", "--minutes", "15",
                   "--device", "cpu", "--val-fraction", "0.25", "--title", "Liver tumour", "--progress", "json"]


@pytest.mark.parametrize("settings, resume", [
    (TrainSettings(model_name="Scratch", device="cpu").with_preset("quick"), False),
    (replace(TrainSettings(model_name="Fine", base_model="abdomen-ct", seed=2, iterations=5).with_preset("thorough"),
             patch_size=(32, 48, 64)), True),
])
def test_the_engines_own_parser_accepts_the_command(settings, resume):
    from mednextv2.cli import build_parser

    cmd = train_command("py", settings, "/d", "/o", resume=resume)
    args = build_parser().parse_args(cmd[3:])  # after "py -m mednextv2"
    assert (args.command, args.dataset, args.output, args.progress, args.resume) == ("train", "/d", "/o", "json", resume)
    assert (args.base, args.preset) == ((settings.base_model, None) if settings.base_model else (None, settings.architecture))
    assert (args.minutes, args.epochs, args.iterations) == (settings.minutes, settings.epochs, settings.iterations)
    assert (None if args.patch is None else tuple(args.patch)) == settings.patch_size and args.device == settings.device
    assert args.val_fraction == settings.val_fraction and args.title == settings.model_name


def test_default_settings_leave_patch_and_split_to_the_engine():
    cmd = train_command("py", TrainSettings(device="cpu"), "d", "o")
    assert "--patch" not in cmd and "--val-fraction" not in cmd  # the engine's plan and split rule


def test_command_fine_tune_with_epochs_and_resume():
    s = replace(TrainSettings(base_model="abdomen-ct", seed=3).with_preset("thorough"), patch_size=None)
    cmd = train_command("py", s, "d", "o", resume=True)
    assert cmd[cmd.index("--base") + 1] == "abdomen-ct" and "--preset" not in cmd
    assert cmd[cmd.index("--epochs") + 1] == "300" and "--minutes" not in cmd and "--patch" not in cmd
    assert cmd[cmd.index("--seed") + 1] == "3" and cmd[-3:] == ["--resume", "--progress", "json"]


def test_bad_settings_list_every_problem():
    s = TrainSettings(model_name=" ", minutes=5, epochs=3, patch_size=(64, 64, 50), device="tpu", val_fraction=1.5)
    with pytest.raises(SettingsError) as info:
        train_command("py", s, "d", "o")
    text = str(info.value)
    for words in ("name", "not both", "[64, 64, 50]", "tpu", "validation fraction"):
        assert words in text


def test_settings_round_trip_and_ids():
    s = TrainSettings(model_name="Lung nodules (CT) v2!", base_model="lung", patch_size=(32, 64, 64), seed=1)
    assert TrainSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert s.model_id == "lung-nodules-ct-v2" and model_id_from_name("***") == "my-model"
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainSettings.from_dict({"colour": 1})


def test_progress_records_become_typed_updates():
    u = parse_training_line('{"stage": "train", "fraction": 0.5, "eta_s": 125.0, "message": "", "epoch": 3, '
                            '"epochs": 10, "iteration": 40, "loss": 0.4123, "dice": {"liver": 0.9, "tumor": 0.5}, "lr": 0.001}\n')
    assert (u.epoch, u.epochs, u.iteration, u.loss, u.lr) == (3, 10, 40, 0.4123, 0.001)
    assert u.mean_dice == pytest.approx(0.7)
    assert u.status_text() == "Epoch 3/10 · loss 0.412 · Dice 0.70 · lr 1.0e-03"
    junk = update(stage="plan", fraction=7, epoch="x", loss=None, dice={"a": "NaN", "b": None}, lr=True, message="planning")
    assert junk.fraction == 1.0 and junk.epoch is None and junk.dice == {} and junk.lr is None
    assert junk.status_text() == "Plan · planning"
    assert format_eta(59) == "59 s left" and format_eta(3725) == "1 h 02 min left"
    assert parse_training_line("INFO loading weights") is None and parse_training_line('{"loss": 1}') is None


def test_curves_follow_the_engines_epoch_counting():
    """As core/mednextv2/train/loop.py reports: epoch in progress from 1, the last validation repeated."""
    curves = TrainingCurves()
    last_dice = None
    for epoch in (1, 2, 3):
        for it in range(4):
            changed = curves.add(update(epoch=epoch, iteration=it, loss=1.0 - 0.1 * ((epoch - 1) * 4 + it), dice=last_dice))
            assert changed
        last_dice = {"liver": 0.5 + 0.1 * epoch, "tumor": None if epoch == 1 else 0.2}
    xs = [x for x, _ in curves.loss_series().points]
    assert xs == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75]
    dice = {s.name: s.points for s in curves.dice_series()}
    assert dice == {"liver": ((1.0, 0.6), (2.0, pytest.approx(0.7))), "tumor": ((2.0, 0.2),)}
    assert curves.best_dice() == (1, pytest.approx(0.6))  # mean over the labels measured, as the engine's nanmean
    assert not curves.add(update(epoch=3, dice={"liver": 0.5 + 0.1 * 2, "tumor": 0.2})), "a repeated Dice changes nothing"
    assert not curves.add(update(stage="plan", fraction=0.1))
    explicit = update(epoch=7, dice={"liver": 0.9}, dice_epoch=5)
    assert explicit.dice_epoch == 5 and update(epoch=7, dice={"liver": 0.9}).dice_epoch == 6


def test_curves_thin_long_runs_and_map_to_pixels():
    curves = TrainingCurves()
    for i in range(5000):
        curves.add(update(**{"epoch": i // 100, "iteration": i % 100, "loss": 2.0 - i / 5000}))
    points = curves.loss_series().points
    assert len(points) == 400 and points[0][1] > points[-1][1]
    lo, hi = value_range([curves.loss_series()])
    assert 1.0 < lo < hi <= 2.0
    pixels = to_pixels([(0, 0.0), (10, 1.0), (5, 2.0)], (0, 10), (0, 1), (10, 20, 100, 50))
    assert pixels == [(10, 70), (110, 20), (60, 20)]  # y clipped to the top edge


def test_resume_state_round_trip_and_discovery(tmp_path):
    settings = TrainSettings(model_name="Liver").with_preset("quick")
    job = new_job_dir(tmp_path, settings.model_id)
    state = TrainState(dataset=str(job / "dataset"), output_bundle=str(job / "model"), settings=settings)
    save_state(job, state.with_progress(status="running", epochs_done=4))
    loaded = load_state(job)
    assert loaded.status == "running" and loaded.epochs_done == 4 and loaded.settings == settings and loaded.resumable
    assert new_job_dir(tmp_path, settings.model_id).name == "liver-2"
    done = tmp_path / "done"
    save_state(done, state.with_progress(status="finished"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / STATE_FILE).write_text("{not json")
    assert {p.name for p, _ in find_jobs(tmp_path)} == {"liver", "done"}  # the broken one is skipped
    assert [p.name for p, _ in find_resumable(tmp_path)] == ["liver"]
    assert list(job.glob(".*")) == [], "no temporary file left"
    with pytest.raises(ResumeStateError, match="cannot read"):
        load_state(broken)
    (broken / STATE_FILE).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ResumeStateError, match="not a version-1"):
        load_state(broken)
    with pytest.raises(ValueError, match="unknown training status"):
        state.with_progress(status="paused")


def test_state_file_gets_the_users_usual_mode(tmp_path):
    """Written by mednextv2.atomic: mkstemp's private 0600 must not survive the rename."""
    from mednextv2.atomic import default_mode
    settings = TrainSettings(model_name="Liver")
    state = TrainState(dataset="d", output_bundle="m", settings=settings)
    path = save_state(tmp_path, state)
    assert path.stat().st_mode & 0o777 == default_mode(0o666) != 0o600
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]


def test_each_training_job_folder_is_created_new(tmp_path):
    (tmp_path / "liver").mkdir()
    (tmp_path / "liver" / "thesis.txt").write_text("keep", encoding="utf-8")
    job = new_job_dir(tmp_path, "liver")
    assert job.name == "liver-2" and job.is_dir() and list(job.iterdir()) == []
    assert (tmp_path / "liver" / "thesis.txt").read_text(encoding="utf-8") == "keep"


def test_the_engine_gets_all_cores_but_one():
    settings = TrainSettings(model_name="Liver").with_preset("quick")
    command = train_command("py", settings, "ds", "out", threads=3)
    assert command[command.index("--threads") + 1] == "3" and command[-2:] == ["--progress", "json"]
    assert "--threads" not in train_command("py", settings, "ds", "out")
