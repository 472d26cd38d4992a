"""How many CPU threads torch gets: the cores that are free now, not the cores that exist.

With more threads than free cores, every parallel op waits at torch's thread barrier for a
thread whose core is busy elsewhere (Slicer rendering, a browser, a second engine). The network
issues hundreds of ops per forward, so those waits add up: on a 2-core machine beside a 2-thread
torch process, v2-base at 64^3 took 8x longer with 2 threads than with 1. One policy for every
engine entry point: an explicit count is kept; otherwise the free cores are estimated from
/proc/stat (CPU time used by other processes since the last look) and torch's thread count
follows them, re-checked at most once per RECHECK_S while inference runs.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator, Optional, Tuple

from mednextv2.errors import InputError

RECHECK_S = 2.0  # between re-estimates while tiles run; a tile takes 0.2-5 s on a CPU
FIRST_SAMPLE_S = 0.2  # the first estimate watches the machine this long
MIN_WINDOW_S = 0.1  # /proc/stat counts in 10 ms ticks: shorter windows are noise
BUSY_MARGIN = 0.35  # a core counts as free when at most this fraction of it is used by others


def available_cores() -> int:
    """Cores this process may run on (affinity, cgroup CPU sets), not the machine's total."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _machine_busy() -> Optional[Tuple[float, float]]:
    """(busy, total) CPU seconds of the whole machine since boot from /proc/stat; None where absent."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return (total - idle) / hz, total / hz


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


class CoreWatch:
    """Free cores from the machine's CPU use minus this process's own, between two looks."""

    def __init__(self) -> None:
        self._last = self._look()
        self._free: Optional[float] = None

    @staticmethod
    def _look():
        return time.monotonic(), _machine_busy(), _own_cpu()

    def free_cores(self) -> Optional[float]:
        """Cores not used by other processes since the previous call; None without /proc/stat."""
        now = self._look()
        (t0, m0, own0), (t1, m1, own1) = self._last, now
        if m0 is None or m1 is None:
            return None
        if t1 - t0 < MIN_WINDOW_S:  # too short to tell: the last estimate stands, the window grows
            return self._free
        self._last = now
        others = max(0.0, (m1[0] - m0[0]) - (own1 - own0)) / (t1 - t0)
        self._free = max(0.0, available_cores() - others)
        return self._free


def threads_for(free: Optional[float], cores: int) -> int:
    """Thread count for `free` cores (None: unknown, use them all): a core used by others more
    than BUSY_MARGIN of the time is left to them."""
    if free is None:
        return cores
    return max(1, min(cores, int(free + BUSY_MARGIN)))


def _env_threads() -> Optional[int]:
    """OMP_NUM_THREADS, where the user (or a parent process) set it: a ceiling for the policy."""
    try:
        value = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return value if value >= 1 else None


def check_threads(threads: Optional[int], option: str = "--threads") -> Optional[int]:
    if threads is not None and (isinstance(threads, bool) or int(threads) != threads or threads < 1):
        raise InputError(f"{option} must be a whole number of at least 1, got {threads!r}")
    return threads


_WATCH: Optional[CoreWatch] = None


def _process_watch() -> CoreWatch:
    """One watch per process, so that every predictor after the first starts with a fresh estimate."""
    global _WATCH
    if _WATCH is None:
        _WATCH = CoreWatch()
        time.sleep(FIRST_SAMPLE_S)
    return _WATCH


class ThreadPolicy:
    """torch's intra-op thread count for an engine run: fixed (`threads`), or following the free cores.

    torch's count belongs to the whole process, and a Python caller may have set its own: the
    count applies only inside `applied()`, which puts the caller's back afterwards. Call
    `update()` before each unit of work (a tile batch, a training step); it is cheap and
    re-estimates only every RECHECK_S.
    """

    def __init__(self, threads: Optional[int] = None) -> None:
        self.fixed = check_threads(threads)
        self.cores = min(available_cores(), _env_threads() or available_cores())
        self._checked = -RECHECK_S
        self._chosen: Optional[int] = None

    @contextmanager
    def applied(self) -> Iterator["ThreadPolicy"]:
        """Within it, `update()` may change torch's thread count; after it, the caller's count is back:
        a library call must leave a Python user's process as it found it."""
        import torch  # here, so that option checking does not load torch

        before = torch.get_num_threads()
        try:
            yield self
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)

    def update(self) -> int:
        import torch

        if self.fixed is not None:
            n = self.fixed
        elif self._chosen is not None and time.monotonic() - self._checked < RECHECK_S:
            n = self._chosen
        else:
            self._checked = time.monotonic()
            n = self._chosen = threads_for(_process_watch().free_cores(), self.cores)
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
        return n
