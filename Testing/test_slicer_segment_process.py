"""EngineProcess on real child processes: output, exit codes, and whole-tree cancel."""
from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest

import slicer_segment_paths  # noqa: F401
from MedNeXtV2SegmentLib.process import EngineProcess, ExitCode

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the tree check reads /proc; Windows uses taskkill /T")

# A parent that starts a grandchild, reports its pid, then waits: the shape of PythonSlicer
# (launcher) -> python-real (worker). `ignore_term` makes both ignore SIGTERM.
TREE = textwrap.dedent("""
    import signal, subprocess, sys, time
    if {ignore_term}:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the grandchild through exec
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print("grandchild", child.pid, flush=True)
    print("parent log line", file=sys.stderr, flush=True)
    time.sleep(120)
""")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie has stopped running, whoever reaps it


def start_tree(ignore_term: bool) -> tuple:
    proc = EngineProcess([sys.executable, "-c", TREE.format(ignore_term=ignore_term)]).start()
    deadline = time.monotonic() + 20
    grandchild = None
    while grandchild is None and time.monotonic() < deadline:
        for line in proc.poll():
            if line.stream == "stdout" and line.text.startswith("grandchild"):
                grandchild = int(line.text.split()[1])
        time.sleep(0.05)
    assert grandchild is not None, "the test tree did not start"
    assert alive(proc.pid) and alive(grandchild)
    return proc, grandchild


@pytest.mark.parametrize("ignore_term", [False, True], ids=["sigterm", "sigkill-after-grace"])
def test_cancel_kills_the_whole_tree(ignore_term):
    proc, grandchild = start_tree(ignore_term)
    started = time.monotonic()
    proc.cancel(grace_s=1.0)
    took = time.monotonic() - started
    deadline = time.monotonic() + 5
    while (alive(proc.pid) or alive(grandchild)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(proc.pid), "the launcher survived cancel"
    assert not alive(grandchild), "the grandchild (the real worker) survived cancel"
    assert proc.returncode == ExitCode.CANCELLED
    assert proc.wait(timeout=5) == ExitCode.CANCELLED
    assert took < (6.0 if ignore_term else 4.0)  # grace is 1 s; generous for a loaded 2-core CI box
    assert "parent log line" in "\n".join(proc.stderr_tail) or any(
        l.text == "parent log line" for l in proc.poll())


def test_output_streams_and_exit_code_are_kept_apart():
    script = ("import sys\n"
              "print('{\"stage\": \"predict\", \"fraction\": 0.5}', flush=True)\n"
              "for i in range(60): print(f'err {i}', file=sys.stderr)\n"
              "sys.exit(3)\n")
    proc = EngineProcess([sys.executable, "-c", script], tail_lines=10).start()
    assert proc.wait(timeout=30) == ExitCode.OUT_OF_RESOURCES
    lines = proc.poll()
    assert [l.text for l in lines if l.stream == "stdout"] == ['{"stage": "predict", "fraction": 0.5}']
    assert sum(l.stream == "stderr" for l in lines) == 60
    assert list(proc.stderr_tail) == [f"err {i}" for i in range(50, 60)]
    assert proc.finished and not proc.is_running()
    assert "memory" in ExitCode.describe(proc.returncode)


def test_poll_does_not_block_while_running():
    proc = EngineProcess([sys.executable, "-c", "import time; time.sleep(30)"]).start()
    try:
        started = time.monotonic()
        assert proc.poll() == [] and not proc.finished and proc.returncode is None
        assert time.monotonic() - started < 0.5
    finally:
        proc.cancel(grace_s=1.0)
    assert not proc.is_running()


def test_environment_and_missing_program_are_reported():
    env = dict(os.environ, MEDNEXTV2_PROBE="42")
    proc = EngineProcess([sys.executable, "-c", "import os; print(os.environ['MEDNEXTV2_PROBE'])"], env=env).start()
    assert proc.wait(timeout=30) == 0
    assert [l.text for l in proc.poll()] == ["42"]
    with pytest.raises(RuntimeError, match="Could not start"):
        EngineProcess(["/nonexistent/PythonSlicer", "-m", "mednextv2"]).start()
    with pytest.raises(ValueError):
        EngineProcess([])


def test_exit_code_descriptions():
    assert ExitCode.describe(2) == "rejected the input"
    assert ExitCode.describe(130) == "was cancelled"
    assert ExitCode.describe(None) == "is still running"
    assert ExitCode.describe(-9) == "was killed by signal 9"
    assert ExitCode.describe(7) == "failed with exit code 7"
