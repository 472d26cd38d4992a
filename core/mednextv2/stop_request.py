"""A graceful stop asked for by the program that started the engine (the Slicer modules).

Signals are not enough: Windows has no SIGTERM for a console-less child, and `taskkill /F`
leaves no chance to write the checkpoint the Train page promises. So the parent names a file
in MEDNEXTV2_STOP_FILE and creates it to ask for a stop; the engine looks for it at the points
where it already reports progress (each training step, each sliding-window tile) and stops there
as it would on SIGTERM. No variable, no check: a plain CLI run is unaffected.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

from mednextv2.errors import Cancelled

STOP_FILE_ENV = "MEDNEXTV2_STOP_FILE"


def reason() -> Optional[str]:
    """'stop request' once the parent has created the stop file, else None (one stat call)."""
    path = os.environ.get(STOP_FILE_ENV)
    return "stop request" if path and os.path.exists(path) else None


def checked(progress: Callable[..., None]) -> Callable[..., None]:
    """`progress` that first raises Cancelled when a stop was requested (segment's cancel points)."""
    if not os.environ.get(STOP_FILE_ENV):
        return progress

    def report(*args, **kwargs):
        if reason():
            raise Cancelled("cancelled by a stop request")
        return progress(*args, **kwargs)

    return report
