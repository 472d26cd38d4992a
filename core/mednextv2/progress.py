"""Progress reporting for long work: a bar for people, JSON lines for the Slicer modules.

Every stage reports through one callable, `report(stage, fraction, message="", **extra)`.
JSON mode prints one object per line on stdout with the keys `stage`, `fraction`, `eta_s`,
`message` plus any extras (training adds `epoch`, `epochs_done`, `iteration`, `loss`, `dice`,
`dice_epoch`, `lr`; each rank of a torchrun batch adds `rank`), so the
Slicer modules parse a single format.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from typing import Callable, Optional, TextIO

ProgressCallback = Callable[..., None]
MODES = ("bar", "json", "none")


class _EtaClock:
    """ETA from the time spent on the current stage and the fraction done."""

    def __init__(self) -> None:
        self.stage: Optional[str] = None
        self.start = time.monotonic()

    def eta(self, stage: str, fraction: float) -> Optional[float]:
        now = time.monotonic()
        if stage != self.stage:
            self.stage, self.start = stage, now
            return None
        if fraction <= 0:
            return None
        return max(0.0, (now - self.start) * (1.0 - fraction) / fraction)


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonProgress:
    def __init__(self, stream: Optional[TextIO] = None) -> None:
        self.stream = stream
        self.clock = _EtaClock()

    def __call__(self, stage: str, fraction: float, message: str = "", eta_s: Optional[float] = None, **extra) -> None:
        if eta_s is None:
            eta_s = self.clock.eta(stage, fraction)
        record = {"stage": stage, "fraction": round(float(fraction), 4),
                  "eta_s": None if eta_s is None else round(eta_s, 1), "message": message}
        record.update({k: _clean(v) for k, v in extra.items()})
        stream = self.stream or sys.stdout
        stream.write(json.dumps(record) + "\n")
        stream.flush()


# The stream whose last line is an unfinished bar (drawn with \r, not yet ended).
_open_bar_stream: Optional[TextIO] = None


def end_bar_line(stream: TextIO) -> None:
    """End an unfinished bar line on `stream`, so that text written next starts on a line of its
    own (as tqdm's `write` does); the bar goes on drawing on the next line."""
    global _open_bar_stream
    if _open_bar_stream is not None and _open_bar_stream is stream:
        stream.write("\n")
        _open_bar_stream = None


class BarSafeLogHandler(logging.StreamHandler):
    """A log handler that never glues its record to the end of a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        end_bar_line(self.stream)
        super().emit(record)


class BarProgress:
    def __init__(self, stream: Optional[TextIO] = None, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.clock = _EtaClock()
        self.last_stage: Optional[str] = None

    def __call__(self, stage: str, fraction: float, message: str = "", eta_s: Optional[float] = None, **extra) -> None:
        stream = self.stream or sys.stderr
        if "rank" in extra:  # several ranks draw on one terminal
            stage = f"rank {extra['rank']} {stage}"
        if eta_s is None:
            eta_s = self.clock.eta(stage, fraction)
        if self.last_stage is not None and stage != self.last_stage:
            end_bar_line(stream)
        self.last_stage = stage
        fraction = min(max(float(fraction), 0.0), 1.0)
        filled = int(round(fraction * self.width))
        eta = "" if eta_s is None else f" ETA {eta_s:5.0f}s"
        stream.write(f"\r{stage:>12} [{'#' * filled}{'.' * (self.width - filled)}] {fraction * 100:5.1f}%{eta} {message}"[:160])
        global _open_bar_stream
        _open_bar_stream = stream
        if fraction >= 1.0:
            end_bar_line(stream)
            self.last_stage = None
        stream.flush()


def null_progress(stage: str, fraction: float, message: str = "", **extra) -> None:
    return None


def with_rank(report: ProgressCallback, rank: int) -> ProgressCallback:
    """The reporter of one rank of a sharded run: JSON lines carry `rank`, the bar names it."""
    if report is null_progress:
        return report

    def ranked(*args, **extra) -> None:
        report(*args, rank=rank, **extra)

    return ranked


def make_progress(mode: str = "bar", stream: Optional[TextIO] = None) -> ProgressCallback:
    """The reporter for a CLI `--progress` choice."""
    if mode == "json":
        return JsonProgress(stream)
    if mode == "bar":
        return BarProgress(stream)
    if mode == "none":
        return null_progress
    raise ValueError(f"--progress must be one of {', '.join(MODES)}, got {mode!r}")
