"""The model list both modules show, read in the background and kept for both.

`mednextv2 models list --json` is an engine run like any other, never waited for on the GUI
thread: a Qt timer (when Qt is there) polls it, scripts call `poll()`. Every panel listens, so a
model that one module adds (a download, an import, a model Train registers) reaches the other's
list without a Refresh. The engine client (engine_client.py) owns the one loader and starts its runs.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, List, Optional

from .models import CatalogError, ModelChoice, models_by_id, read_model_list

if TYPE_CHECKING:
    from .engine_client import EngineRunner

logger = logging.getLogger(__name__)
POLL_INTERVAL_MS = 200

ModelListListener = Callable[[Optional[Exception]], None]


class ModelListLoader:
    def __init__(self, startListRun: Callable[[], "EngineRunner"]) -> None:
        self.startListRun = startListRun  # starts `models list --json`
        self.choices: Optional[List[ModelChoice]] = None  # None until a list has been read
        self.cuda: Optional[bool] = None  # whether the engine's torch sees a CUDA GPU; None until probed
        self._listeners: List[ModelListListener] = []
        self._run: Optional["EngineRunner"] = None
        self._readAgain = False  # a model was added while a read was under way: that read may predate it
        self._stdout: List[str] = []
        self._timer = None

    @property
    def models(self) -> List[ModelChoice]:
        """The list last read; empty until one has been."""
        return self.choices or []

    def model(self, modelId: str) -> Optional[ModelChoice]:
        return models_by_id(self.models).get(modelId)

    def addListener(self, listener: ModelListListener) -> None:
        """`listener(error)` runs after each read: error None (the list is in `models`) or the CatalogError."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    def removeListener(self, listener: ModelListListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def load(self, force: bool = False) -> bool:
        """Read the list in the background, unless it has been read (and not `force`) or is being
        read; True when a read is under way. RuntimeError when the engine's Python cannot start."""
        if self._run is not None:
            return True
        if self.choices is not None and not force:
            return False
        self._stdout = []
        self._run = self.startListRun()
        timer = self._pollTimer()
        if timer is not None:
            timer.start()
        return True

    def reload(self) -> None:
        """A model was added: forget the list and read it again; every listener hears the new one."""
        self.choices = None
        if self._run is not None:
            self._readAgain = True
            return
        try:
            self.load(force=True)
        except RuntimeError as e:  # the engine's Python cannot start: the panels say so
            self._tell(e)

    def poll(self) -> bool:
        """Drain the list run; True once there is none (finished and its listeners told)."""
        run = self._run
        if run is None:
            return True
        finished = run.finished  # read before draining, so no line is left behind
        self._stdout += [line.text for line in run.poll() if line.stream == "stdout"]
        if not finished:
            return False
        self._run = None
        if self._timer is not None:
            self._timer.stop()
        error: Optional[Exception] = None
        try:
            self.choices = read_model_list(run.returncode, "\n".join(self._stdout), "\n".join(run.stderr_tail))
        except CatalogError as e:
            error = e
        if self._readAgain:
            self._readAgain = False
            self.reload()
            return self._run is None
        self._tell(error)
        return True

    def _tell(self, error: Optional[Exception]) -> None:
        for listener in list(self._listeners):
            try:
                listener(error)
            except Exception:  # one broken panel must not keep the list from the other
                logger.exception("model list listener failed")

    def _pollTimer(self):
        if self._timer is None:
            try:
                import qt
            except ImportError:  # outside Slicer: the caller polls
                return None
            self._timer = qt.QTimer()
            self._timer.setInterval(POLL_INTERVAL_MS)
            self._timer.connect("timeout()", self.poll)
        return self._timer
