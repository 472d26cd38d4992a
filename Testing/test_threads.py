"""The engine's thread policy: a fixed count is kept; otherwise torch gets the cores others leave free."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from mednextv2.errors import InputError
from mednextv2.threads import CoreWatch, ThreadPolicy, available_cores, check_threads, threads_for


def test_threads_for_leaves_busy_cores_to_others():
    assert threads_for(None, 8) == 8  # unknown load: every core
    assert threads_for(2.0, 2) == 2
    assert threads_for(1.0, 2) == 1  # one core busy elsewhere: one thread, no waiting at barriers
    assert threads_for(0.7, 2) == 1  # a core busy 30% of the time still counts as free
    assert threads_for(0.0, 4) == 1  # never zero
    assert threads_for(7.9, 4) == 4  # never more than the cores we may run on


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_thread_count_is_an_input_error(bad):
    with pytest.raises(InputError, match="--threads"):
        check_threads(bad)


def test_fixed_count_is_set_and_kept_while_applied_then_restored():
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    policy = ThreadPolicy(other)
    with policy.applied():
        assert policy.update() == other and torch.get_num_threads() == other
    assert torch.get_num_threads() == before


def test_followed_count_is_set_again_after_a_restore(monkeypatch):
    """Within RECHECK_S of an estimate the policy reuses it, also in the next run after the count was put back."""
    import mednextv2.threads as threads

    monkeypatch.setattr(threads, "_process_watch", lambda: type("Watch", (), {"free_cores": lambda self: 1.0})())
    policy = ThreadPolicy()
    policy.cores = 2
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for _ in range(2):
            with policy.applied():
                assert policy.update() == 1 and torch.get_num_threads() == 1
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_core_watch_sees_a_busy_process():
    """A child spinning one core is counted as busy (real /proc/stat)."""
    watch = CoreWatch()
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        watch.free_cores()
        time.sleep(0.8)
        beside = watch.free_cores()
    finally:
        child.kill()
        child.wait()
    assert beside is not None and beside <= available_cores() - 0.6, beside


def test_core_watch_does_not_count_our_own_work(monkeypatch):
    """Our own threads' CPU time is not load: otherwise one busy forward would halve the next one's threads."""
    import mednextv2.threads as threads

    clock = {"t": 100.0, "machine": 0.0, "own": 0.0}
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(threads, "_machine_busy", lambda: (clock["machine"], 0.0))
    monkeypatch.setattr(threads, "_own_cpu", lambda: clock["own"])
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    watch = CoreWatch()
    clock.update(t=102.0, machine=8.0, own=8.0)  # 2 s, 4 cores busy, all ours
    assert watch.free_cores() == pytest.approx(4.0)
    clock.update(t=104.0, machine=14.0, own=12.0)  # 2 s: ours 2 cores, someone else 1 core
    assert watch.free_cores() == pytest.approx(3.0)
