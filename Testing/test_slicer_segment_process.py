"""EngineProcess on real child processes: output, exit codes, and whole-tree cancel."""
from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest

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


def poll_until_gone(proc, pids, limit_s):
    """What the panel's timer does: poll (which escalates the cancel) until the tree is gone."""
    deadline = time.monotonic() + limit_s
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        proc.poll()
        time.sleep(0.05)


@pytest.mark.parametrize("ignore_term", [False, True], ids=["sigterm", "sigkill-after-grace"])
def test_cancel_returns_at_once_and_polling_stops_the_whole_tree(ignore_term):
    """The tree ignores the stop file; after the grace SIGTERM goes to the group, then SIGKILL.
    cancel() itself never waits (it runs on Slicer's GUI thread)."""
    proc, grandchild = start_tree(ignore_term)
    started = time.monotonic()
    proc.cancel(grace_s=0.5, term_grace_s=1.0)
    assert time.monotonic() - started < 0.2, "cancel blocked the caller"
    assert alive(proc.pid) and alive(grandchild), "nothing may be killed before the grace period"
    poll_until_gone(proc, (proc.pid, grandchild), limit_s=8)
    took = time.monotonic() - started
    assert not alive(proc.pid), "the launcher survived cancel"
    assert not alive(grandchild), "the grandchild (the real worker) survived cancel"
    assert proc.returncode == ExitCode.CANCELLED
    assert proc.wait(timeout=5) == ExitCode.CANCELLED
    assert took >= 0.5 and took < (5.0 if ignore_term else 4.0)  # generous for a loaded 2-core CI box
    if ignore_term:
        assert took >= 1.5, "SIGKILL came before the SIGTERM grace was over"
    assert "parent log line" in "\n".join(proc.stderr_tail) or any(
        l.text == "parent log line" for l in proc.poll())


def test_stop_file_lets_the_engine_stop_by_itself_before_any_signal(tmp_path):
    """The polite step: the child sees MEDNEXTV2_STOP_FILE appear and exits on its own (the engine
    saves its checkpoint there); no signal is sent, and the stop file is cleaned up."""
    script = textwrap.dedent("""
        import os, signal, sys, time
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(99))  # a signal would show as exit 99
        print("ready", flush=True)
        while not os.path.exists(os.environ["MEDNEXTV2_STOP_FILE"]):
            time.sleep(0.02)
        print("stopping cleanly", flush=True)
        sys.exit(130)
    """)
    proc = EngineProcess([sys.executable, "-c", script]).start()
    deadline = time.monotonic() + 20
    while not any(l.text == "ready" for l in proc.poll()):
        assert time.monotonic() < deadline, "the child did not start"
        time.sleep(0.02)
    proc.cancel(grace_s=30)
    assert proc.wait(timeout=10) == ExitCode.CANCELLED
    assert proc._proc.returncode == 130, "stopped by a signal, not by the stop file"
    proc.poll()
    assert not os.path.exists(proc.stop_file)


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
    assert proc.wait(timeout=10) == ExitCode.CANCELLED and not proc.is_running()


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
