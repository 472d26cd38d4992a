"""The one engine client both modules share: which Python runs the engine, with what environment,
through which process factory, the install step, and the model list with its background loader.

Both logics (Segment and Train) get the same client (`shared_client()` unless a test injects
one), so a model that Train registers reaches the Segment list through the same cache, and every
engine process is started the same way:

- `processFactory(args, env, cwd)` builds an unstarted runner (`EngineRunner`; by default
  `process.EngineProcess`); the client calls it and starts it. This is the one injection point
  for tests.
- The child runs `<python> -m mednextv2 ...` with the shipped engine's folder as its working
  directory. For `-m` Python puts the working directory first on sys.path, before PYTHONPATH,
  so the shipped engine wins even when the launcher (Slicer's PythonSlicer, a CTK app launcher)
  prepends Slicer's site-packages, where a pip-installed `mednextv2` may live, to an inherited
  PYTHONPATH. PYTHONSAFEPATH, which would turn that off, is removed from the child's environment.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Protocol, Sequence

from .command import build_models_command, engine_command, engine_environment, engine_package_dir, find_slicer_python
from .install import InstallLogic
from .models import MODEL_LIST, CatalogError, ModelChoice, ModelListCache, models_by_id, read_model_list
from .process import EngineProcess, ExitCode, OutputLine

logger = logging.getLogger(__name__)


class EngineRunner(Protocol):
    """What the modules use of a child process (`process.EngineProcess` is the real one)."""

    args: List[str]
    stderr_tail: Sequence[str]
    cancelled: bool

    def start(self) -> "EngineRunner": ...
    def poll(self) -> List[OutputLine]: ...
    def cancel(self, grace_s: float = 10.0) -> None: ...
    @property
    def finished(self) -> bool: ...
    @property
    def returncode(self) -> Optional[int]: ...
    @property
    def elapsed_s(self) -> float: ...


class EngineError(RuntimeError):
    """The engine failed; carries its exit code, the tail of its stderr and the kept work folder."""

    def __init__(self, message: str, exitCode: Optional[int] = None, stderrTail: str = "",
                 workDir: Optional[Path] = None) -> None:
        super().__init__(message)
        self.exitCode, self.stderrTail, self.workDir = exitCode, stderrTail, workDir


def check_exit(runner: "EngineRunner", workDir: Optional[Path] = None) -> None:
    """Nothing for a finished run that succeeded; else EngineError in the engine's words, naming
    `workDir` (where the run's files are kept) unless the user cancelled it."""
    code = runner.returncode
    if code == ExitCode.OK:
        return
    if code == ExitCode.CANCELLED:
        raise EngineError("Cancelled.", code)
    where = f"\nInput and output files are kept in {workDir}" if workDir else ""
    raise EngineError(f"The engine {ExitCode.describe(code)} (exit code {code}).{where}", code,
                      "\n".join(runner.stderr_tail), workDir)


ProcessFactory = Callable[[Sequence[str], Mapping[str, str], Optional[str]], EngineRunner]


def engine_process(args: Sequence[str], env: Mapping[str, str], cwd: Optional[str]) -> EngineProcess:
    """The default `ProcessFactory`."""
    return EngineProcess(args, env=env, cwd=cwd)


ModelListListener = Callable[[Optional[Exception]], None]


class EngineClient:
    def __init__(self, python: Optional[str] = None, installLogic: Optional[InstallLogic] = None,
                 processFactory: Optional[ProcessFactory] = None, packageDir: Optional[Path] = None,
                 baseEnv: Optional[Mapping[str, str]] = None, modelList: Optional[ModelListCache] = None) -> None:
        self.python = python or find_slicer_python()
        self.installLogic = installLogic or InstallLogic()
        self.processFactory: ProcessFactory = processFactory or engine_process
        self.packageDir = Path(packageDir) if packageDir is not None else engine_package_dir()
        self.baseEnv = baseEnv  # None: Slicer's own environment at each start
        self.modelList = modelList if modelList is not None else MODEL_LIST
        self._listeners: List[ModelListListener] = []
        self._listRun: Optional[EngineRunner] = None
        self._listStdout: List[str] = []
        self._timer = None

    # -- processes --------------------------------------------------------------------------
    def environment(self) -> Dict[str, str]:
        env = engine_environment(self.baseEnv, self.packageDir)
        env.pop("PYTHONSAFEPATH", None)  # it would keep the working directory off sys.path
        return env

    def command(self, *args: str) -> List[str]:
        return engine_command(self.python, *args)

    def start(self, args: Sequence[str]) -> EngineRunner:
        """Start `args` (from `command()`, or another use of the engine's Python) as a child process."""
        return self.processFactory([str(a) for a in args], self.environment(), str(self.packageDir)).start()

    # -- models -----------------------------------------------------------------------------
    def startModelAction(self, action: str, argument: str) -> EngineRunner:
        """`mednextv2 models download ID` or `models import PATH` (a bundle or an nnU-Net folder)."""
        return self.start(build_models_command(self.python, action, argument))

    def finishModelAction(self, runner: EngineRunner) -> None:
        """EngineError if the download or import failed; else every panel gets the new list."""
        check_exit(runner)
        self.modelsChanged()

    @property
    def models(self) -> List[ModelChoice]:
        """The cached list; empty until a list run has finished."""
        return self.modelList.choices or []

    def model(self, modelId: str) -> Optional[ModelChoice]:
        return models_by_id(self.models).get(modelId)

    def addModelListListener(self, listener: ModelListListener) -> None:
        """`listener(error)` runs after each list read: error None (the list is in `models`) or the CatalogError."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    def removeModelListListener(self, listener: ModelListListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def loadModels(self, force: bool = False) -> bool:
        """Read the list in the background, unless it is cached (and not `force`) or being read;
        True when a read is under way. A Qt timer (when Qt is there) polls it; scripts call `pollModels()`."""
        if self._listRun is not None:
            return True
        if self.modelList.choices is not None and not force:
            return False
        self._listStdout = []
        self._listRun = self.start(build_models_command(self.python, "list", "--json"))
        timer = self._pollTimer()
        if timer is not None:
            timer.start()
        return True

    def modelsChanged(self) -> None:
        """A model was added (download, import, registration): forget the list and read it again,
        so every panel that listens shows the new one without a Refresh."""
        self.modelList.clear()
        try:
            self.loadModels(force=True)
        except RuntimeError as e:  # the engine's Python cannot start: the panels say so
            self._tell(e)

    def _tell(self, error: Optional[Exception]) -> None:
        for listener in list(self._listeners):
            try:
                listener(error)
            except Exception:  # one broken panel must not keep the list from the other
                logger.exception("model list listener failed")

    def pollModels(self) -> bool:
        """Drain the list run; True once there is none (finished and its listeners told)."""
        run = self._listRun
        if run is None:
            return True
        finished = run.finished  # read before draining, so no line is left behind
        self._listStdout += [line.text for line in run.poll() if line.stream == "stdout"]
        if not finished:
            return False
        self._listRun = None
        if self._timer is not None:
            self._timer.stop()
        error: Optional[Exception] = None
        try:
            self.modelList.set(read_model_list(run.returncode, "\n".join(self._listStdout), "\n".join(run.stderr_tail)))
        except CatalogError as e:
            error = e
        self._tell(error)
        return True

    def _pollTimer(self):
        if self._timer is None:
            try:
                import qt
            except ImportError:  # outside Slicer: the caller polls
                return None
            self._timer = qt.QTimer()
            self._timer.setInterval(200)
            self._timer.connect("timeout()", self.pollModels)
        return self._timer


_SHARED: Optional[EngineClient] = None


def shared_client() -> EngineClient:
    """The client both modules use inside Slicer (made on first use)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = EngineClient()
    return _SHARED
