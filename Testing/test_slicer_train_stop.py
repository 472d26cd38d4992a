"""Cancel from the Train page on the real engine: the stop file, not a signal, stops `mednextv2 train`
after a checkpoint (what the page promises; on Windows there is no SIGTERM to do it). Real data
(the MR tissue map at 2 mm), v2-tiny on the CPU, the modules' own process runner."""
from __future__ import annotations

import json
import sys
import time

from MedNeXtV2SegmentLib.command import engine_environment
from MedNeXtV2SegmentLib.process import EngineProcess, ExitCode
from mednextv2.train import checkpoint
from mednextv2.train.demo import split_scan


def test_stop_request_saves_the_checkpoint_and_exits_130(tmp_path, data_dir):
    tissue = data_dir / "mr-brain-tissue"
    dataset, _, _ = split_scan(tmp_path / "data", tissue / "icbm152_2009a_t1.nii.gz",
                               tissue / "icbm152_2009a_tissue.nii.gz", list_heldout=True)
    output, work = tmp_path / "model", tmp_path / "model.training"
    env = engine_environment()
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "mednextv2", "train", str(dataset), "-o", str(output), "--preset", "v2-tiny",
               "--epochs", "50", "--iterations", "12", "--spacing", "2", "2", "2", "--patch", "32", "32", "32",
               "--val-cases", "anterior", "--device", "cpu", "--progress", "json"]
    process = EngineProcess(command, env=env).start()
    deadline, training = time.monotonic() + 240, False
    while not training:
        assert time.monotonic() < deadline and not process.finished, "\n".join(process.stderr_tail)
        for line in process.poll():
            if line.stream == "stdout" and line.text.startswith("{"):
                record = json.loads(line.text)
                training = record.get("stage") == "train" and record.get("iteration", 0) >= 1
        time.sleep(0.05)
    process.cancel(grace_s=120)  # the Train page's grace: only a stuck engine gets a signal
    assert process.wait(timeout=120) == ExitCode.CANCELLED
    process.poll()  # the last lines join stderr_tail
    stderr = "\n".join(process.stderr_tail)
    assert process._proc.returncode == 130, f"not the engine's own exit: {process._proc.returncode}"
    assert "stop request" in stderr and "--resume" in stderr, stderr[-2000:]
    state = json.loads(checkpoint.load(work / checkpoint.LATEST)["state_json"])
    assert state["epoch"] == 0 and state["iteration"] >= 1  # saved mid-epoch: Resume loses nothing
    assert not output.exists(), "a cancelled run must not leave a bundle"
