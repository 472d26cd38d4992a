"""The one engine client both modules share: which Python runs the engine, with what environment,
through which process factory, the install step, and the model list (`modelList`, a
model_list_loader.ModelListLoader that reads it in the background).

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

from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Protocol, Sequence

from .command import build_models_command, engine_command, engine_environment, engine_package_dir, find_slicer_python
from .install import InstallLogic
from .model_list_loader import ModelListLoader
from .process import EngineProcess, ExitCode, OutputLine


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


class EngineClient:
    def __init__(self, python: Optional[str] = None, installLogic: Optional[InstallLogic] = None,
                 processFactory: Optional[ProcessFactory] = None, packageDir: Optional[Path] = None,
                 baseEnv: Optional[Mapping[str, str]] = None) -> None:
        self.python = python or find_slicer_python()
        self.installLogic = installLogic or InstallLogic()
        self.processFactory: ProcessFactory = processFactory or engine_process
        self.packageDir = Path(packageDir) if packageDir is not None else engine_package_dir()
        self.baseEnv = baseEnv  # None: Slicer's own environment at each start
        self.modelList = ModelListLoader(lambda: self.start(build_models_command(self.python, "list", "--json")))

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
        self.modelList.reload()


_SHARED: Optional[EngineClient] = None


def shared_client() -> EngineClient:
    """The client both modules use inside Slicer (made on first use)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = EngineClient()
    return _SHARED
