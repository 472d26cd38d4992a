"""Install the engine's Python dependencies into Slicer, once, without touching Slicer's own.

torch comes from the PyTorch extension's PyTorchUtils (it picks the CUDA build that matches the
driver); the two small pure-Python/wheel packages come from `slicer.packaging.pip_ensure` where
Slicer has it (5.12 and newer: its own progress and error dialogs), else from
`slicer.util.pip_install` inside this module's dialogs, run with a constraints file that pins the
numpy, SimpleITK and requests that Slicer ships, so pip fails loudly instead of upgrading them (an
upgraded SimpleITK breaks Slicer: field notes, complaint 1). Nothing is installed while Slicer runs
in testing mode: a test must never start a multi-GB download by itself.
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
import platform
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable, Tuple

logger = logging.getLogger(__name__)

# The oldest torch the engine tests pass with. Older ones cannot read nnU-Net checkpoints safely
# (their numpy scalars need torch.serialization.safe_globals with the (object, name) entries of 2.6),
# and 2.2 and older are built against numpy 1, which fails with the numpy 2 of Slicer 5.10+.
TORCH_REQUIREMENT = ">=2.6"
# pip name -> (import name, requirement): the engine's runtime deps that Slicer does not ship
PIP_PACKAGES = {"pynrrd": ("nrrd", ">=1.0"), "safetensors": ("safetensors", ">=0.4")}
# Shipped with Slicer: never installed, upgraded or downgraded by this extension.
SLICER_BUNDLED = ("numpy", "SimpleITK", "requests")
# PyTorchUtils installs this with slicer.util.pip_install, which on Slicer 5.12+ opens
# slicer.packaging's own progress dialog over ours: there it comes first, in our one pip_ensure.
LIGHT_THE_TORCH = "light-the-torch>=0.5"
# The newest torch PyPI has for x86_64 macOS; it is built against numpy 1 and fails on numpy 2.
INTEL_MAC_NEWEST_TORCH = "2.2.2"
REQUESTER = "MedNeXtV2"


class InstallError(RuntimeError):
    """Installation failed; `details` holds the tail of pip's output."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


@dataclass(frozen=True)
class InstallPlan:
    torch: bool  # install (or upgrade) torch through PyTorchUtils
    pip: Tuple[str, ...]  # requirement strings for pip_install
    old_torch: str = ""  # the installed torch version when it is too old (an upgrade, not an install)
    blocker: str = ""  # why no torch that works can be installed on this platform (then nothing is tried)

    @property
    def empty(self) -> bool:
        return not self.torch and not self.pip and not self.blocker


def version_tuple(version: str) -> Tuple[int, ...]:
    """(2, 1, 0) from '2.1.0+cu118' or '2.1': the numeric release part, enough for a '>=' check."""
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = re.match(r"\d*", piece).group()
        if not digits:
            break  # '0rc1' gives 0 and ends the release part
        parts.append(int(digits))
        if len(digits) < len(piece):
            break
    return tuple(parts)


def meets_requirement(version: str, requirement: str = TORCH_REQUIREMENT) -> bool:
    """`version` satisfies a '>=X.Y' requirement (the only form this extension uses)."""
    if not requirement.startswith(">="):
        raise ValueError(f"only '>=' requirements are supported, got {requirement!r}")
    return version_tuple(version) >= version_tuple(requirement[2:])


def _installed_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def this_platform() -> Tuple[str, str]:
    """('Darwin', 'x86_64'): the operating system and the machine Slicer's Python runs on."""
    return platform.system(), platform.machine()


def torch_platform_problem(system: str, machine: str, numpy_version: str, torch_version: str = "") -> str:
    """Why no usable torch exists for this Slicer on this platform, or "".

    PyPI's last torch for Intel Macs is 2.2.2: older than TORCH_REQUIREMENT, and built against
    numpy 1, so with the numpy 2 of Slicer 5.10+ every run would fail with "Numpy is not available".
    A torch newer than that (built from source) is left to the version check."""
    if system != "Darwin" or machine not in ("x86_64", "AMD64", "i386"):
        return ""
    if torch_version and version_tuple(torch_version) > version_tuple(INTEL_MAC_NEWEST_TORCH):
        return ""
    if meets_requirement(INTEL_MAC_NEWEST_TORCH):
        return ""
    numpy_major = version_tuple(numpy_version)[:1]
    numpy_2 = (f", and it is built for numpy 1 while this Slicer ships numpy {numpy_version}"
               if numpy_major and numpy_major[0] >= 2 else "")
    return (f"MedNeXtV2 cannot run on an Intel Mac: it needs torch{TORCH_REQUIREMENT}, and the newest PyTorch "
            f"for Intel Macs is {INTEL_MAC_NEWEST_TORCH}{numpy_2}. Nothing was installed. What works: Slicer on a "
            "Mac with Apple Silicon, on Windows or on Linux.")


def plan_install(find_spec: Callable = importlib.util.find_spec,
                 version_of: Callable[[str], str] = _installed_version,
                 platform_of: Callable[[], Tuple[str, str]] = this_platform) -> InstallPlan:
    """What is missing, and a torch that is too old (left by another extension, say): read from the
    package metadata, so torch is never imported into Slicer's process just to check it."""
    missing = tuple(f"{pip_name}{req}" for pip_name, (module, req) in PIP_PACKAGES.items() if find_spec(module) is None)
    version = (version_of("torch") or "") if find_spec("torch") is not None else ""
    blocker = torch_platform_problem(*platform_of(), version_of("numpy") or "", version)
    if blocker:
        return InstallPlan(torch=False, pip=missing, blocker=blocker)
    if find_spec("torch") is None:
        return InstallPlan(torch=True, pip=missing)
    old = bool(version) and not meets_requirement(version)
    return InstallPlan(torch=old, pip=missing, old_torch=version if old else "")


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
    if plan.old_torch:
        items.append(f"torch{TORCH_REQUIREMENT}: upgrade from the installed {plan.old_torch}, which is too old "
                     "(through the PyTorch extension; restart Slicer afterwards if another module already uses torch)")
    elif plan.torch:
        items.append(f"torch{TORCH_REQUIREMENT} (through the PyTorch extension, several GB for the GPU build)")
    items.extend(plan.pip)
    return ("MedNeXtV2 needs these Python packages, which are not installed (or too old) yet:\n\n  - "
            + "\n  - ".join(items)
            + "\n\nSlicer's own numpy, SimpleITK and requests are kept as they are. This can take several "
              "minutes and needs an internet connection. Install now?")


def slicer_packaging():
    """Slicer's package installer (`slicer.packaging`, Slicer 5.12 and newer), or None before it."""
    try:
        from slicer import packaging
    except ImportError:
        return None
    return packaging


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

    def __init__(self, find_spec: Callable = importlib.util.find_spec,
                 version_of: Callable[[str], str] = _installed_version,
                 platform_of: Callable[[], Tuple[str, str]] = this_platform) -> None:
        self.find_spec, self.version_of, self.platform_of = find_spec, version_of, platform_of

    def plan(self) -> InstallPlan:
        return plan_install(self.find_spec, self.version_of, self.platform_of)

    def require(self) -> None:
        """The one check before any engine run, in both modules (the logic never asks: it raises)."""
        plan = self.plan()
        if plan.blocker:
            raise InstallError(plan.blocker)
        if not plan.empty:
            raise InstallError("MedNeXtV2 needs Python packages that are missing or too old:\n"
                               + confirmation_text(plan).split("\n\n")[1]
                               + "\nPress Segment or Start training in the panel to install them.")

    def ensure(self, askConfirmation: bool = True) -> bool:
        """Install what is missing. False: nothing done and the user knows why (they declined, or
        slicer.packaging already showed its error with pip's output)."""
        import slicer

        plan = self.plan()
        if plan.empty:
            return True
        if plan.blocker:
            raise InstallError(plan.blocker)
        if slicer.app.testingEnabled():  # what slicer.packaging's skip_in_testing reads
            raise InstallError("Slicer runs in testing mode, where MedNeXtV2 installs nothing (a test must not "
                               "start a download of several GB). Missing:\n"
                               + confirmation_text(plan).split("\n\n")[1]
                               + "\nInstall them first: start Slicer without --testing and press Segment.")
        if askConfirmation:
            if not slicer.util.confirmOkCancelDisplay(confirmation_text(plan), windowTitle="MedNeXtV2: install packages"):
                return False
        packaging = slicer_packaging()
        if packaging is not None:
            # Slicer's own installer, with its own progress and error dialogs: none of ours beside it.
            if not self._pipEnsure(packaging, plan.pip + ((LIGHT_THE_TORCH,) if plan.torch else ())):
                return False
        elif plan.pip:
            self._pipInstall(plan.pip)
        if plan.torch:
            self._installTorch()
        importlib.invalidate_caches()
        still = self.plan()
        if not still.empty:
            raise InstallError("Installation finished but these packages still cannot be imported: "
                               + ", ".join(([f"torch{TORCH_REQUIREMENT}"] if still.torch else []) + list(still.pip))
                               + ". Restart Slicer and try again.")
        return True

    def ensureForSelfTest(self) -> None:
        """For Reload and Test and ctest: never install silently. Asks (testing mode: refuses, see
        ensure) and raises a message naming what is missing when nothing was installed."""
        if not self.ensure(askConfirmation=True):
            raise InstallError("The MedNeXtV2 self-test needs PyTorch and the engine's packages, which were not "
                               "installed:\n" + confirmation_text(self.plan()).split("\n\n")[1]
                               + "\nInstall them (press Segment in the panel) and run the test again.")

    def _pipEnsure(self, packaging, requirements: Tuple[str, ...]) -> bool:
        """slicer.packaging.pip_ensure (Slicer 5.12+) with our constraints: True once installed."""
        if not requirements:
            return True
        with self._constraintsFile() as constraints:
            try:
                # We asked once already (the question lists torch too, which pip_ensure does not install).
                packaging.pip_ensure(list(requirements), constraints=constraints, prompt_install=False,
                                     requester=REQUESTER, skip_in_testing=True, show_progress=True)
            except subprocess.CalledProcessError as e:
                logger.error("pip could not install %s (exit code %s); Slicer showed pip's output",
                             ", ".join(requirements), e.returncode)
                return False
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
        """Before Slicer 5.12: slicer.util.pip_install (no dialog of its own) inside ours."""
        import slicer

        with self._constraintsFile() as constraints:
            with self._busy("Installing " + ", ".join(requirements) + "..."), self._capture() as out:
                try:
                    # A list keeps the constraints path in one piece even if it has spaces.
                    slicer.util.pip_install(list(requirements) + ["-c", constraints])
                except Exception as e:
                    raise InstallError(f"pip could not install {', '.join(requirements)}: {e}", self._tail(out)) from e

    @staticmethod
    @contextlib.contextmanager
    def _constraintsFile():
        fd, constraints = tempfile.mkstemp(prefix="mednextv2-constraints-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(protected_constraints())
        try:
            yield constraints
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
