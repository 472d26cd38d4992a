"""Read the engine's `--progress json` lines (written by core/mednextv2/progress.py).

Each line is one JSON object with `stage`, `fraction`, `eta_s`, `message`, plus extras
(training adds `epoch`, `loss`, `dice`, ...). Anything else on stdout (a stray print, a
warning from a library) is not progress and is passed to the log unchanged.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

PROGRESS_KEYS = ("stage", "fraction", "eta_s", "message")


@dataclass(frozen=True)
class ProgressEvent:
    stage: str
    fraction: float  # 0..1, clamped
    eta_s: Optional[float] = None
    message: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def percent(self) -> int:
        return int(round(self.fraction * 100))


def finite_number(value: Any) -> Optional[float]:
    """A JSON number as a float; None for anything else (bools, strings, NaN, infinities)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def parse_progress_line(line: str) -> Optional[ProgressEvent]:
    """The event on this line, or None when the line is not a progress record."""
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("stage"), str):
        return None
    fraction = finite_number(record.get("fraction"))
    if fraction is None:
        return None
    eta = finite_number(record.get("eta_s"))
    message = record.get("message")
    extra = {k: v for k, v in record.items() if k not in PROGRESS_KEYS}
    return ProgressEvent(stage=record["stage"], fraction=min(max(fraction, 0.0), 1.0),
                         eta_s=None if eta is None or eta < 0 else eta,
                         message=message if isinstance(message, str) else "", extra=extra)


def format_duration(seconds: Optional[float]) -> str:
    """'45 s', '3 min 05 s', '1 h 02 min'; '' when unknown."""
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_progress(event: ProgressEvent) -> str:
    """Text for the progress bar: 'predict 42% - ETA 1 min 20 s - tile 12/30'."""
    parts = [f"{event.stage} {event.percent}%"]
    if event.eta_s is not None:
        parts.append(f"ETA {format_duration(event.eta_s)}")
    if event.message:
        parts.append(event.message)
    return " - ".join(parts)
