"""Run the engine as a child process without blocking the caller, and cancel it as a whole tree.

Plain Python (no Qt, no Slicer) so that pytest can drive it and both modules (Segment, Train)
share it. The GUI polls `EngineProcess.poll()` from a timer; scripts call `wait()`.

Why a process group: Slicer's `PythonSlicer` is a launcher that starts the real interpreter as
its own child, so killing the launcher alone leaves the worker running (the field notes list
this as the classic "Cancel did nothing" bug). Every descendant shares the group we create.

Cancel never waits: it creates the engine's stop file (MEDNEXTV2_STOP_FILE, polled by the engine),
and `poll()` - called by the panel's timer - escalates to SIGTERM, then SIGKILL (taskkill /F /T on
Windows) only when the engine has not stopped within the grace period.
"""
from __future__ import annotations

import collections
import enum
import logging
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Deque, Dict, List, Mapping, Optional, Sequence, Tuple

from mednextv2.errors import Cancelled, InputError, MedNeXtError, ResourceError
from mednextv2.stop_request import STOP_FILE_ENV

logger = logging.getLogger(__name__)

IS_WINDOWS = os.name == "nt"


class ExitCode(enum.IntEnum):
    """Exit codes of the `mednextv2` command line: the engine's errors carry them (mednextv2/errors.py)."""

    OK = 0
    ERROR = MedNeXtError.exit_code
    BAD_INPUT = InputError.exit_code
    OUT_OF_RESOURCES = ResourceError.exit_code
    CANCELLED = Cancelled.exit_code

    @classmethod
    def describe(cls, code: Optional[int]) -> str:
        meanings = {cls.OK: "finished", cls.ERROR: "failed with an unexpected error",
                    cls.BAD_INPUT: "rejected the input", cls.OUT_OF_RESOURCES: "ran out of memory or disk",
                    cls.CANCELLED: "was cancelled"}
        if code is None:
            return "is still running"
        if code in meanings:
            return meanings[cls(code)]
        if code < 0:
            return f"was killed by signal {-code}"
        return f"failed with exit code {code}"


@dataclass(frozen=True)
class OutputLine:
    stream: str  # "stdout" or "stderr"
    text: str


class EngineProcess:
    """One child process; output lines are read on threads into a queue that `poll()` drains."""

    def __init__(self, args: Sequence[str], env: Optional[Mapping[str, str]] = None,
                 cwd: Optional[str] = None, tail_lines: int = 40, stop_file: Optional[str] = None) -> None:
        if not args:
            raise ValueError("EngineProcess needs a command to run")
        self.args: List[str] = [str(a) for a in args]
        self.env: Optional[Dict[str, str]] = dict(env) if env is not None else None
        self.cwd = cwd
        self.cancelled = False
        # Must not exist yet: the engine stops as soon as it does.
        self.stop_file = stop_file or os.path.join(tempfile.gettempdir(), f"mednextv2-stop-{uuid.uuid4().hex}")
        self._owns_stop_file = False
        self._escalation: List[Tuple[float, str]] = []
        self.stderr_tail: Deque[str] = collections.deque(maxlen=tail_lines)
        self._proc: Optional[subprocess.Popen] = None
        self._queue: "queue.Queue[OutputLine]" = queue.Queue()
        self._readers: List[threading.Thread] = []
        self._start_time: Optional[float] = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "EngineProcess":
        if self._proc is not None:
            raise RuntimeError("EngineProcess.start() was already called")
        env = dict(os.environ if self.env is None else self.env)
        env[STOP_FILE_ENV] = self.stop_file
        kwargs = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                      env=env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace", bufsize=1)
        if IS_WINDOWS:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # own session and process group: see module docstring
        logger.info("Starting: %s", " ".join(self.args))
        try:
            self._proc = subprocess.Popen(self.args, **kwargs)
        except OSError as e:
            raise RuntimeError(f"Could not start {self.args[0]!r}: {e}") from e
        self._start_time = time.monotonic()
        for name, stream in (("stdout", self._proc.stdout), ("stderr", self._proc.stderr)):
            reader = threading.Thread(target=self._read, args=(name, stream), daemon=True,
                                      name=f"EngineProcess-{name}-{self._proc.pid}")
            reader.start()
            self._readers.append(reader)
        return self

    def _read(self, name: str, stream) -> None:
        for line in iter(stream.readline, ""):
            self._queue.put(OutputLine(name, line.rstrip("\r\n")))
        stream.close()

    @property
    def pid(self) -> Optional[int]:
        return None if self._proc is None else self._proc.pid

    @property
    def elapsed_s(self) -> float:
        return 0.0 if self._start_time is None else time.monotonic() - self._start_time

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def finished(self) -> bool:
        """True once the process has exited and all of its output is queued: one more `poll()`
        returns the last lines."""
        if self._proc is None or self._proc.poll() is None:
            return False
        return not any(r.is_alive() for r in self._readers)

    @property
    def returncode(self) -> Optional[int]:
        if self._proc is None:
            return None
        code = self._proc.poll()
        if code is not None and self.cancelled and code != ExitCode.OK:
            return int(ExitCode.CANCELLED)
        return code

    def poll(self) -> List[OutputLine]:
        """Lines produced since the last call, without blocking; also takes due cancel steps."""
        self._escalate()
        lines = []
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line.stream == "stderr":
                self.stderr_tail.append(line.text)
            lines.append(line)
        return lines

    def wait(self, timeout: Optional[float] = None, interval: float = 0.1) -> Optional[int]:
        """Block until finished (or timeout, then None); output stays queued for `poll()`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            self._escalate()
            if deadline is not None and time.monotonic() > deadline:
                return None
            time.sleep(interval)
        return self.returncode

    # -- cancel ------------------------------------------------------------------------------
    def cancel(self, grace_s: float = 10.0, term_grace_s: float = 5.0) -> None:
        """Ask the engine to stop, without waiting: `poll()` escalates when the time is up.

        First the stop file (see core/mednextv2/stop_request.py): the engine stops at its next
        progress point, saving a training checkpoint, on every OS. After `grace_s` the whole tree
        gets SIGTERM (POSIX), after `term_grace_s` more it is killed (taskkill /F /T on Windows).
        """
        if self._proc is None or self.cancelled:
            return
        self.cancelled = True
        now = time.monotonic()
        self._escalation = [(now + grace_s, "term"), (now + grace_s + term_grace_s, "kill")]
        if self.stop_file:
            try:
                with open(self.stop_file, "x", encoding="utf-8") as f:
                    f.write("stop\n")
                self._owns_stop_file = True
            except OSError as e:  # cannot ask politely: go straight to the signals
                logger.warning("could not write the stop file %s (%s); stopping with signals", self.stop_file, e)
                self._escalation = [(now, "term"), (now + term_grace_s, "kill")]
        self._escalate()

    def _escalate(self) -> None:
        """Take the cancel steps that are due; called by `poll()` and `wait()`, so a GUI timer drives it."""
        if not self._escalation or self._proc is None:
            return
        if self._proc.poll() is not None and (IS_WINDOWS or not self._group_alive()):
            self._escalation = []
            self._remove_stop_file()
            return
        now = time.monotonic()
        while self._escalation and self._escalation[0][0] <= now:
            _, step = self._escalation.pop(0)
            logger.warning("Engine process %d still running after a stop request: %s", self._proc.pid, step)
            self._terminate(force=step == "kill")

    def _terminate(self, force: bool) -> None:
        if IS_WINDOWS:
            if force:
                # taskkill /T walks the tree by parent pid; started, not waited for (never block the GUI).
                subprocess.Popen(["taskkill", "/F", "/T", "/PID", str(self._proc.pid)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
            return  # no SIGTERM on Windows: the stop file was the polite step
        self._signal_group(signal.SIGKILL if force else signal.SIGTERM)

    def _remove_stop_file(self) -> None:
        if self.stop_file and self._owns_stop_file:
            try:
                os.remove(self.stop_file)
            except OSError:
                pass

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self._proc.pid, sig)  # the group id is the leader's pid (start_new_session)
        except ProcessLookupError:
            pass

    def _group_alive(self) -> bool:
        self._proc.poll()
        try:
            os.killpg(self._proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def __del__(self) -> None:
        # A panel closed mid-run must not leave an engine computing in the background.
        try:
            if self.is_running():
                self._terminate(force=IS_WINDOWS)
        except Exception:  # interpreter shutdown: modules may already be gone
            pass
