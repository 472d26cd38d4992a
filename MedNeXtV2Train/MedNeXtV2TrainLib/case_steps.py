"""Work on scene cases one case per step, so that the GUI thread never stalls longer than one case.

Checking and writing cases reads MRML nodes, which must happen on Slicer's main thread. The
logic therefore offers that work as generators (`MedNeXtV2TrainLogic.checkCaseSteps`,
`createJobSteps`): each `next()` handles at most one case and yields the `CaseStep` about to
come; the generator's return value is the result. `SteppedWork` runs such a generator from a
timer, one step per tick, so Slicer processes events between cases; `cancel()` closes the
generator, whose cleanup (a half-written dataset and job folder removed) runs at once. Scripts
and the self-test call `run_steps()`, which runs every step in a row.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Generator, Optional, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class CaseStep:
    index: int  # 0-based: the case the next step handles
    total: int
    name: str

    def text(self, verb: str) -> str:
        """'Writing case 2/5: Breast' for verb 'Writing'."""
        return f"{verb} case {self.index + 1}/{self.total}: {self.name}"


Steps = Generator[CaseStep, None, T]


def run_steps(steps: "Steps[T]", onStep: Optional[Callable[[CaseStep], None]] = None) -> T:
    """Every step in a row (no GUI): the generator's result."""
    while True:
        try:
            step = next(steps)
        except StopIteration as done:
            return done.value
        if onStep is not None:
            onStep(step)


class SteppedWork:
    """Runs `steps` from `timer` (a qt.QTimer in Slicer), one step per timeout.

    `onStep(step)` after each step, then `onDone(result)`, or `onError(exception)`; after
    `cancel()` none of them is called again."""

    def __init__(self, steps: "Steps", timer, onStep: Callable[[CaseStep], None], onDone: Callable[[object], None],
                 onError: Callable[[Exception], None]) -> None:
        self.steps, self.timer = steps, timer
        self.onStep, self.onDone, self.onError = onStep, onDone, onError
        self.running = False
        self.timer.setInterval(0)  # the next case as soon as Slicer has processed its events
        self.timer.connect("timeout()", self.onTick)

    def start(self) -> "SteppedWork":
        self.running = True
        self.timer.start()
        return self

    def onTick(self) -> None:
        if not self.running:
            return
        try:
            step = next(self.steps)
        except StopIteration as done:
            self._stop()
            self.onDone(done.value)
            return
        except Exception as e:  # the case's own message: the panel shows it
            self._stop()
            self.onError(e)
            return
        self.onStep(step)

    def cancel(self) -> None:
        """Stop now; the generator's cleanup runs before this returns."""
        if not self.running:
            return
        self._stop()
        self.steps.close()

    def _stop(self) -> None:
        self.running = False
        self.timer.stop()
