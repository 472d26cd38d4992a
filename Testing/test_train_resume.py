"""Kill and resume: `mednextv2 train` killed with SIGKILL mid-epoch (a crash), resumed, stopped with
SIGTERM mid-epoch (a cancel), resumed again, and finished with the right epoch count and a usable
model. Real processes, real data (the MR tissue map at 2 mm), v2-tiny on the CPU."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mednextv2
from mednextv2.bundle import load_bundle
from mednextv2.train import checkpoint
from mednextv2.train.demo import split_scan

EPOCHS, ITERATIONS = 3, 12


def _env():
    env = dict(os.environ)
    package_root = str(Path(mednextv2.__file__).resolve().parents[1])
    env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # small tensors: one thread beats two on a shared 2-core machine
    return env


def _command(dataset: Path, output: Path, *extra: str):
    return [sys.executable, "-m", "mednextv2", "train", str(dataset), "-o", str(output), "--preset", "v2-tiny",
            "--epochs", str(EPOCHS), "--iterations", str(ITERATIONS), "--spacing", "2", "2", "2",
            "--patch", "32", "32", "32", "--val-cases", "anterior", "--lr", "3e-3", "--device", "cpu",
            "--progress", "json", *extra]


def _run_until(cmd, stop_epoch: int, sig: int, timeout: float = 240):
    """Start training; send `sig` once a progress line shows `stop_epoch` under way. Returns (rc, stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    sent = False
    try:
        for line in proc.stdout:
            record = json.loads(line)
            if record.get("stage") == "train":  # the wizard's fields, on every training line
                assert {"epoch", "iteration", "loss", "dice", "lr", "eta_s", "fraction", "message"} <= set(record)
            if record.get("stage") == "train" and record.get("epoch") == stop_epoch and record.get("iteration", 0) >= 1:
                proc.send_signal(sig)
                sent = True
                break
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sent, f"never reached epoch {stop_epoch}: {proc.stderr.read()[-2000:]}"
    return rc, proc.stderr.read()


def _state(work: Path) -> dict:
    return json.loads(checkpoint.load(work / checkpoint.LATEST)["state_json"])


@pytest.mark.slow
def test_kill_resume_cancel_resume_finish(tmp_path, data_dir):
    tissue = data_dir / "mr-brain-tissue"
    dataset, _, _ = split_scan(tmp_path / "data", tissue / "icbm152_2009a_t1.nii.gz",
                               tissue / "icbm152_2009a_tissue.nii.gz", list_heldout=True)
    output = tmp_path / "model"
    work = tmp_path / "model.training"

    rc, _ = _run_until(_command(dataset, output), stop_epoch=2, sig=signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert _state(work)["epoch"] == 1  # the crash lost less than one epoch

    again = subprocess.run(_command(dataset, output), capture_output=True, text=True, env=_env(), timeout=120)
    assert again.returncode == 2 and "pass --resume to continue it" in again.stderr

    rc, err = _run_until(_command(dataset, output, "--resume"), stop_epoch=3, sig=signal.SIGTERM)
    assert rc == 130, err[-2000:]
    assert "checkpoint saved" in err and "--resume" in err
    state = _state(work)
    assert state["epoch"] == 2 and state["iteration"] >= 1  # SIGTERM saved mid-epoch, nothing lost

    done = subprocess.run(_command(dataset, output, "--resume"), capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(work / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(int(r["iterations"]) == ITERATIONS for r in rows)
    bundle = load_bundle(output)
    assert bundle.spec.provenance.training["epochs"] == EPOCHS
    model = bundle.build_models("cpu")[0]
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 32, 32, 32))
    assert out.shape == (1, 3, 32, 32, 32) and bool(torch.isfinite(out).all())
    assert np.isfinite(float(rows[-1]["train_loss"]))
