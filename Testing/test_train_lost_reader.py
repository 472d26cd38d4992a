"""Slicer exits during training: it writes the stop file and its ends of the engine's stdout and
stderr pipes close. The engine must not die of the closed pipes (BrokenPipeError on its next
progress line or log record): it stops at the stop file, writes its checkpoint, exits 130, and
`--resume` continues from that checkpoint. Real processes, real data (the MR tissue map at
2 mm), v2-tiny on the CPU, the training set-up of test_train_resume.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mednextv2
from mednextv2.train import checkpoint
from mednextv2.train.demo import split_scan

ITERATIONS = 12


def _env(stop_file: Path) -> dict:
    env = dict(os.environ)
    package_root = str(Path(mednextv2.__file__).resolve().parents[1])
    env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["MEDNEXTV2_STOP_FILE"] = str(stop_file)
    return env


def _command(dataset: Path, output: Path, epochs: int, *extra: str):
    return [sys.executable, "-m", "mednextv2", "train", str(dataset), "-o", str(output), "--preset", "v2-tiny",
            "--epochs", str(epochs), "--iterations", str(ITERATIONS), "--spacing", "2", "2", "2",
            "--patch", "32", "32", "32", "--val-cases", "anterior", "--device", "cpu", "--progress", "json", *extra]


@pytest.mark.slow
def test_training_survives_closed_pipes_stops_at_the_stop_file_and_resumes(tmp_path, data_dir):
    tissue = data_dir / "mr-brain-tissue"
    dataset, _, _ = split_scan(tmp_path / "data", tissue / "icbm152_2009a_t1.nii.gz",
                               tissue / "icbm152_2009a_tissue.nii.gz", list_heldout=True)
    output, work, stop = tmp_path / "model", tmp_path / "model.training", tmp_path / "stop"
    proc = subprocess.Popen(_command(dataset, output, 50), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env=_env(stop))
    try:
        for line in proc.stdout:  # until training is under way
            record = json.loads(line)
            if record.get("stage") == "train" and record.get("iteration", 0) >= 1:
                break
        else:
            pytest.fail(f"training never started: {proc.stderr.read()[-2000:]}")
        proc.stdout.close()  # Slicer has exited: nobody reads the engine's output any more
        proc.stderr.close()
        time.sleep(1.0)  # the engine writes more progress lines into the closed pipes meanwhile
        assert proc.poll() is None, f"the engine died of the closed pipes (exit {proc.returncode})"
        stop.write_text("stop\n")  # what the module's cancel writes when Slicer closes
        rc = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 130, f"not the stop file's exit: {rc}"
    state = json.loads(checkpoint.load(work / checkpoint.LATEST)["state_json"])
    assert state["iteration"] >= 1 or state["epoch"] >= 1, state  # saved where it stopped
    assert not output.exists(), "a stopped run leaves no bundle"

    stop.unlink()
    done = subprocess.run(_command(dataset, output, 1, "--resume"), capture_output=True, text=True,
                          env=_env(stop), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming after epoch {state['epoch']}, iteration {state['iteration']}" in done.stderr, done.stderr[-2000:]
    assert (output / "model.json").is_file()


def test_a_closed_pipe_is_swallowed_and_other_write_errors_are_not():
    import errno
    import io

    from mednextv2.output_streams import ReaderTolerantStream

    read_end, write_end = os.pipe()
    stream = ReaderTolerantStream(io.TextIOWrapper(io.FileIO(write_end, "w"), line_buffering=True))
    stream.write("first line\n")
    assert os.read(read_end, 100) == b"first line\n"
    os.close(read_end)  # the reader has gone
    for _ in range(3):
        stream.write('{"stage": "train"}\n')
        stream.flush()
    assert stream.reader_lost
    stream.close()

    class FullDisk(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        ReaderTolerantStream(FullDisk()).write("x")
