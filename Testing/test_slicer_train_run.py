"""MedNeXtV2Train: a training run as a real child process, with the Segment module's runner.

The child is a stand-in for `mednextv2 train` that behaves as the issue specifies (JSON progress
lines, the stop file or SIGTERM saves a checkpoint and exits 130, --resume continues from it), so the run
logic is tested on real processes, pipes and signals in well under a second per case.
"""
from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
from dataclasses import replace

import pytest


from MedNeXtV2SegmentLib.engine_client import EngineClient  # noqa: E402
from MedNeXtV2TrainLib.resume_state import TrainState, load_state  # noqa: E402
from MedNeXtV2TrainLib.settings import TrainSettings  # noqa: E402
from MedNeXtV2TrainLib.training_run import TrainingRun  # noqa: E402

FAKE_ENGINE = textwrap.dedent(f"""\
    #!{sys.executable}
    # argv: -m mednextv2 train DATASET -o OUT ... ; behaviour chosen by the dataset name
    import json, os, signal, sys, time
    args = sys.argv[1:]
    dataset, out = args[3], args[args.index("-o") + 1]
    os.makedirs(out, exist_ok=True)
    ckpt = os.path.join(out, "checkpoint.json")
    start = json.load(open(ckpt))["epoch"] if "--resume" in args and os.path.exists(ckpt) else 0  # epochs done
    with open(os.path.join(out, "argv.json"), "w") as f:
        json.dump(args, f)
    done = start
    def stop(signum, frame):  # the engine checkpoints and exits 130 on SIGTERM
        json.dump({{"epoch": done}}, open(ckpt, "w"))
        sys.exit(130)
    signal.signal(signal.SIGTERM, stop)
    print("INFO planning", flush=True)
    if dataset.endswith("broken"):
        print("mednextv2: error: case x: label not on the image grid", file=sys.stderr, flush=True)
        sys.exit(2)
    total = 10000 if dataset.endswith("slow") else int(dataset.split("epochs")[-1]) if "epochs" in dataset else 3
    dice = None
    # like the engine's training loop: epoch in progress from 1, the last validation repeated on each line
    for epoch in range(start + 1, total + 1):
        for it in range(3):
            if os.path.exists(os.environ.get("MEDNEXTV2_STOP_FILE", "")):  # the Slicer Cancel, as the engine polls it
                stop(None, None)
            print(json.dumps({{"stage": "train", "fraction": epoch / total, "eta_s": 5.0, "message": "",
                              "epoch": epoch, "iteration": it, "loss": 1.0 / (epoch * 3 + it), "dice": dice, "lr": 0.01,
                              "epochs_done": epoch - 1}}), flush=True)
        dice = {{"lesion": 0.1 + 0.2 * epoch}}
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGTERM}})  # epoch end is atomic, as in the engine
        json.dump({{"epoch": epoch}}, open(ckpt, "w"))
        done = epoch
        print(json.dumps({{"stage": "train", "fraction": epoch / total, "eta_s": 5.0, "message": "",
                          "epoch": epoch + 1, "iteration": 0, "loss": None, "dice": dice, "lr": 0.01,
                          "epochs_done": epoch}}), flush=True)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {{signal.SIGTERM}})
        time.sleep(0.05)
    print(json.dumps({{"stage": "done", "fraction": 1.0, "eta_s": None, "message": "model bundle"}}), flush=True)
    json.dump({{"id": "x"}}, open(os.path.join(out, "model.json"), "w"))
""")


@pytest.fixture()
def fake_python(tmp_path):
    path = tmp_path / "fake_python"
    path.write_text(FAKE_ENGINE)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _run(tmp_path, fake_python, dataset_name):
    job = tmp_path / "job"
    settings = TrainSettings(model_name="Lesion", device="cpu").with_preset("quick")
    state = TrainState(dataset=str(tmp_path / dataset_name), output_bundle=str(job / "model"), settings=settings)
    return TrainingRun(job, state, EngineClient(python=fake_python), cancel_grace_s=10)


def test_run_reports_progress_curves_and_finishes(tmp_path, fake_python):
    run = _run(tmp_path, fake_python, "dataset")
    run.start()
    seen = []
    assert run.wait(timeout=30, on_update=lambda r: seen.extend(r.updates)) == "finished"
    assert sorted({u.dice_epoch for u in seen if u.dice}) == [1, 2, 3]
    assert len([u for u in seen if u.loss is not None]) == 9
    assert run.curves.dice_series()[0].points == ((1.0, pytest.approx(0.3)), (2.0, pytest.approx(0.5)), (3.0, pytest.approx(0.7)))
    assert "INFO planning" in run.log
    saved = load_state(run.job_dir)
    assert saved.status == "finished" and saved.epochs_done == 3 and saved.best_dice == pytest.approx(0.7)
    argv = json.loads((run.job_dir / "model" / "argv.json").read_text(encoding="utf-8"))
    assert argv[:3] == ["-m", "mednextv2", "train"] and argv[-2:] == ["--progress", "json"] and "--resume" not in argv


def test_failed_run_keeps_the_engines_message(tmp_path, fake_python):
    run = _run(tmp_path, fake_python, "broken")
    run.start()
    assert run.wait(timeout=30) == "failed"
    assert "rejected the input" in run.outcome() and "label not on the image grid" in run.outcome()
    assert load_state(run.job_dir).status == "failed"


def test_cancel_saves_a_checkpoint_and_resume_continues(tmp_path, fake_python):
    run = _run(tmp_path, fake_python, "slow")
    run.start()
    while run.state.epochs_done is None or run.state.epochs_done < 2:
        assert not run.poll().finished
    run.cancel()
    assert run.wait(timeout=8) == "cancelled"  # well inside the 10 s grace: the stop file did it
    assert "Resume" in run.outcome()
    saved = load_state(run.job_dir)
    assert saved.status == "cancelled" and saved.resumable
    checkpoint = json.loads((run.job_dir / "model" / "checkpoint.json").read_text(encoding="utf-8"))["epoch"]
    assert checkpoint >= 2 and checkpoint == load_state(run.job_dir).epochs_done

    # After a restart the wizard rebuilds the run from the state file alone.
    # (the stand-in reads its epoch count from the dataset name: this time it stops at 8)
    resumed = TrainingRun(run.job_dir, replace(load_state(run.job_dir), dataset=str(tmp_path / "epochs8")),
                          run.engine, cancel_grace_s=10)
    resumed.start(resume=True)
    seen = []
    assert resumed.wait(timeout=30, on_update=lambda r: seen.extend(r.updates)) == "finished"
    assert "--resume" in json.loads((run.job_dir / "model" / "argv.json").read_text(encoding="utf-8"))
    epochs = sorted({u.epoch for u in seen if u.loss is not None})
    assert epochs == list(range(checkpoint + 1, 9)), "resume continues after the checkpoint, losing nothing"
    assert load_state(run.job_dir).epochs_done == 8
