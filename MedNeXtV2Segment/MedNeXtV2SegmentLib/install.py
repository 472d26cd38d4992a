"""Install the engine's Python dependencies into Slicer, once, without touching Slicer's own.

torch comes from the PyTorch extension's PyTorchUtils (it picks the CUDA build that matches the
driver); the two small pure-Python/wheel packages come from `slicer.util.pip_install`, run with
a constraints file that pins the numpy, SimpleITK and requests that Slicer ships, so pip fails
loudly instead of upgrading them (an upgraded SimpleITK breaks Slicer: field notes, complaint 1).
The `mednextv2` package itself is not pip-installed: it ships inside the extension (see
command.py and the top-level CMakeLists.txt).

The planning half is plain Python and tested with pytest; `InstallLogic` is the Slicer half.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable, Tuple

logger = logging.getLogger(__name__)

TORCH_REQUIREMENT = ">=2.1"
# pip name -> (import name, requirement): the engine's runtime deps that Slicer does not ship
PIP_PACKAGES = {"pynrrd": ("nrrd", ">=1.0"), "safetensors": ("safetensors", ">=0.4")}
# Shipped with Slicer: never installed, upgraded or downgraded by this extension.
SLICER_BUNDLED = ("numpy", "SimpleITK", "requests")


class InstallError(RuntimeError):
    """Installation failed; `details` holds the tail of pip's output."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


@dataclass(frozen=True)
class InstallPlan:
    torch: bool  # install torch through PyTorchUtils
    pip: Tuple[str, ...]  # requirement strings for pip_install

    @property
    def empty(self) -> bool:
        return not self.torch and not self.pip


def plan_install(find_spec: Callable = importlib.util.find_spec) -> InstallPlan:
    missing = tuple(f"{pip_name}{req}" for pip_name, (module, req) in PIP_PACKAGES.items() if find_spec(module) is None)
    return InstallPlan(torch=find_spec("torch") is None, pip=missing)


def protected_constraints(version_of: Callable[[str], str] = importlib.metadata.version) -> str:
    """pip constraints text pinning Slicer's bundled packages to the versions installed now."""
    lines = ["# Slicer's own packages: pip must not replace them (MedNeXtV2 extension)"]
    for name in SLICER_BUNDLED:
        try:
            lines.append(f"{name}=={version_of(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: nothing to protect
    return "\n".join(lines) + "\n"


def confirmation_text(plan: InstallPlan) -> str:
    items = []
    if plan.torch:
        items.append(f"torch{TORCH_REQUIREMENT} (through the PyTorch extension, several GB for the GPU build)")
    items.extend(plan.pip)
    return ("MedNeXtV2 needs these Python packages, which are not installed yet:\n\n  - "
            + "\n  - ".join(items)
            + "\n\nSlicer's own numpy, SimpleITK and requests are kept as they are. This can take several "
              "minutes and needs an internet connection. Install now?")


class _Tee(io.TextIOBase):
    """Copies writes to the real stream and keeps them, to show pip's output on failure."""

    def __init__(self, stream) -> None:
        self.stream, self.buffer = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.buffer.write(text)
        return self.stream.write(text) if self.stream else len(text)

    def flush(self) -> None:
        if self.stream:
            self.stream.flush()


class InstallLogic:
    """Slicer side: ask once, then install. Returns False when the user declines."""

    def __init__(self, find_spec: Callable = importlib.util.find_spec) -> None:
        self.find_spec = find_spec

    def plan(self) -> InstallPlan:
        return plan_install(self.find_spec)

    def ensure(self, askConfirmation: bool = True) -> bool:
        import slicer

        plan = self.plan()
        if plan.empty:
            return True
        if askConfirmation and not slicer.app.commandOptions().testingEnabled:
            if not slicer.util.confirmOkCancelDisplay(confirmation_text(plan), windowTitle="MedNeXtV2: install packages"):
                return False
        if plan.torch:
            self._installTorch()
        if plan.pip:
            self._pipInstall(plan.pip)
        importlib.invalidate_caches()
        still = self.plan()
        if not still.empty:
            raise InstallError("Installation finished but these packages still cannot be imported: "
                               + ", ".join((["torch"] if still.torch else []) + list(still.pip))
                               + ". Restart Slicer and try again.")
        return True

    def _installTorch(self) -> None:
        import slicer

        try:
            import PyTorchUtils
        except ImportError as e:
            raise InstallError("The PyTorch extension is missing. Install 'PyTorch' from the Extensions Manager, "
                               "restart Slicer, and try again.") from e
        # installTorch blocks for minutes: show why Slicer is busy.
        with self._busy("Installing PyTorch (this can take several minutes)..."), self._capture() as out:
            try:
                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                                      torchVersionRequirement=TORCH_REQUIREMENT)
            except Exception as e:
                raise InstallError(f"Installing PyTorch failed: {e}", self._tail(out)) from e
        if torch is None:
            raise InstallError("PyTorch was not installed.", self._tail(out))

    def _pipInstall(self, requirements: Tuple[str, ...]) -> None:
        import slicer

        fd, constraints = tempfile.mkstemp(prefix="mednextv2-constraints-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(protected_constraints())
        try:
            with self._busy("Installing " + ", ".join(requirements) + "..."), self._capture() as out:
                try:
                    # A list keeps the constraints path in one piece even if it has spaces.
                    slicer.util.pip_install(list(requirements) + ["-c", constraints])
                except Exception as e:
                    raise InstallError(f"pip could not install {', '.join(requirements)}: {e}", self._tail(out)) from e
        finally:
            os.remove(constraints)

    @staticmethod
    @contextlib.contextmanager
    def _capture():
        tee = _Tee(sys.stdout)
        with contextlib.redirect_stdout(tee):
            yield tee

    @staticmethod
    def _tail(tee: _Tee, lines: int = 60) -> str:
        return "\n".join(tee.buffer.getvalue().splitlines()[-lines:])

    @staticmethod
    @contextlib.contextmanager
    def _busy(message: str):
        import qt
        import slicer

        dialog = qt.QProgressDialog(message, "", 0, 0, slicer.util.mainWindow())
        dialog.setCancelButton(None)
        dialog.setWindowTitle("MedNeXtV2")
        dialog.setMinimumDuration(0)
        dialog.show()
        slicer.app.processEvents()
        try:
            with slicer.util.WaitCursor():
                yield
        finally:
            dialog.close()
