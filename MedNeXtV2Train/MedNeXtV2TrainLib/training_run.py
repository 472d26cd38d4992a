"""One `mednextv2 train` run as a child process: progress, curves, the job's state file, cancel.

Plain Python (no Qt, no Slicer): the widget calls `poll()` from a timer, the self-test and
scripts call `wait()`. The process is started by the engine client both modules share
(MedNeXtV2SegmentLib/engine_client.py), where tests inject their process factory.
Cancel asks the engine to stop through its stop file (it saves a checkpoint and exits with 130)
and returns at once; `poll()`, driven by the panel's timer, force-stops only after the grace period.
"""
from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Deque, List, Optional

from MedNeXtV2SegmentLib.engine_client import EngineClient, EngineRunner
from MedNeXtV2SegmentLib.process import ExitCode
from MedNeXtV2TrainLib.resume_state import TrainState, save_state
from MedNeXtV2TrainLib.train_command import train_command
from MedNeXtV2TrainLib.train_progress import TrainingUpdate, parse_training_line
from MedNeXtV2TrainLib.training_curves import TrainingCurves

logger = logging.getLogger(__name__)
# Saving a checkpoint of a large model to a slow disk can take a minute; only then force-kill.
CANCEL_GRACE_S = 120.0


@dataclass
class PollResult:
    updates: List[TrainingUpdate] = field(default_factory=list)
    log: List[str] = field(default_factory=list)
    curves_changed: bool = False
    finished: bool = False


class TrainingRun:
    def __init__(self, job_dir: Path, state: TrainState, engine: EngineClient, cancel_grace_s: float = CANCEL_GRACE_S,
                 threads: Optional[int] = None) -> None:
        self.job_dir = Path(job_dir)
        self.state = state
        self.engine = engine
        self.cancel_grace_s = cancel_grace_s
        self.threads = threads  # engine threads; None: the engine's default
        self.curves = TrainingCurves()
        self.log: Deque[str] = collections.deque(maxlen=2000)
        self.process: Optional[EngineRunner] = None
        self.cancel_requested = False
        self._done = False

    def start(self, resume: bool = False) -> None:
        if self.process is not None:
            raise RuntimeError("this training run was already started")
        command = train_command(self.engine.python, self.state.settings, self.state.dataset, self.state.output_bundle, resume,
                                threads=self.threads)
        self._save(status="running", message="")
        try:
            self.process = self.engine.start(command)
        except (OSError, RuntimeError) as e:
            self._save(status="failed", message=str(e))
            raise

    @property
    def running(self) -> bool:
        return self.process is not None and not self._done

    def poll(self) -> PollResult:
        result = PollResult()
        if self.process is None or self._done:
            result.finished = self._done
            return result
        finished = self.process.finished  # read before draining, so no line is left behind
        done_before = self.state.epochs_done
        for line in self.process.poll():
            update = parse_training_line(line.text) if line.stream == "stdout" else None
            if update is None:
                self.log.append(line.text)
                result.log.append(line.text)
                continue
            result.updates.append(update)
            result.curves_changed |= self.curves.add(update)
        done = max([u.epochs_done for u in result.updates if u.epochs_done is not None] + [done_before or 0])
        if result.updates and done != (done_before or 0):  # a small file once per epoch is enough
            self._save(epochs_done=done, best_dice=self._best())
        if finished:
            self._finish()
            result.finished = True
        return result

    def cancel(self) -> None:
        """Ask the engine to save a checkpoint and stop; `poll()` reports when it has."""
        if not self.running or self.cancel_requested:
            return
        self.cancel_requested = True
        self.log.append("Cancel requested: the engine saves a checkpoint, then stops.")
        self.process.cancel(grace_s=self.cancel_grace_s)  # returns at once; poll() escalates if needed

    def wait(self, timeout: Optional[float] = None, interval: float = 0.2,
             on_update: Optional[Callable[[PollResult], None]] = None) -> str:
        """Block until the run ends (scripts, self-test); returns the final status."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            result = self.poll()
            if on_update is not None:
                on_update(result)
            if result.finished:
                return self.state.status
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                deadline = None
            time.sleep(interval)

    def outcome(self) -> str:
        """One paragraph for the user: how the run ended and, on failure, the engine's last words."""
        code = None if self.process is None else self.process.returncode
        text = f"Training {ExitCode.describe(code)}."
        if self.state.status == "cancelled":
            text += " The last checkpoint is kept: use Resume to continue."
        if self.state.status == "failed" and self.process is not None and self.process.stderr_tail:
            text += "\n" + "\n".join(list(self.process.stderr_tail)[-15:])
        return text

    def _best(self) -> Optional[float]:
        best = self.curves.best_dice()
        return None if best is None else round(best[1], 4)

    def _finish(self) -> None:
        self._done = True
        code = self.process.returncode
        if code == ExitCode.OK:
            status = "finished"
        elif code == ExitCode.CANCELLED or self.cancel_requested:
            status = "cancelled"
        else:
            status = "failed"
        self._save(status=status, best_dice=self._best(), message=ExitCode.describe(code))
        logger.info("training in %s %s", self.job_dir, ExitCode.describe(code))

    def _save(self, **changes) -> None:
        self.state = self.state.with_progress(**changes)
        try:
            save_state(self.job_dir, self.state)
        except OSError as e:  # a full disk must not stop the run; the engine's checkpoints matter more
            logger.warning("could not save the training state in %s: %s", self.job_dir, e)
