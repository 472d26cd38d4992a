"""Command lines and environment for running `mednextv2` with Slicer's Python.

The engine is started as `<python> -m mednextv2 ...` with the folder that holds the `mednextv2`
package prepended to PYTHONPATH. That folder is wherever the running Slicer imported it from:
the extension's qt-scripted-modules folder when installed (the top-level CMakeLists.txt copies
core/mednextv2 there), or core/ in a source checkout. So the child always runs the same engine
version as the panel, whatever else is installed in Slicer's site-packages.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from .parameters import SegmentOptions


def find_slicer_python() -> str:
    """PythonSlicer inside Slicer (as slicer.util.executePythonModule does), else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def engine_package_dir() -> Path:
    """The folder that contains the importable `mednextv2` package."""
    import mednextv2

    return Path(mednextv2.__file__).resolve().parent.parent


def engine_environment(base_env: Optional[Mapping[str, str]] = None,
                       package_dir: Optional[Path] = None) -> Dict[str, str]:
    env = dict(os.environ if base_env is None else base_env)
    package_dir = engine_package_dir() if package_dir is None else Path(package_dir)
    paths = [str(package_dir)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))  # dedupe, keep order
    env["PYTHONUNBUFFERED"] = "1"  # progress lines must arrive while the step runs, not at exit
    env["PYTHONIOENCODING"] = "utf-8"  # file names with accents on Windows code pages
    return env


def engine_command(python: str, *args: str) -> List[str]:
    return [python, "-m", "mednextv2", *[str(a) for a in args]]


def build_segment_command(python: str, inputs: Sequence[os.PathLike], output: os.PathLike,
                          options: SegmentOptions) -> List[str]:
    """`mednextv2 segment INPUT... -m MODEL -o OUTPUT ... --progress json`; inputs are the channels."""
    options.validated()
    if not inputs:
        raise ValueError("at least one input image is needed")
    args: List[str] = ["segment", *[os.fspath(p) for p in inputs], "-m", options.model, "-o", os.fspath(output),
                       "--device", options.device, "--tta" if options.tta else "--no-tta"]
    if options.step is not None:
        args += ["--step", f"{float(options.step):g}"]
    if options.fast:
        args.append("--fast")
    if options.structures:
        args += ["--structures", *options.structures]
    args += ["--progress", "json"]
    return engine_command(python, *args)


def build_models_command(python: str, action: str, *args: str, progress: str = "json") -> List[str]:
    """`mednextv2 models --progress json ACTION ...` (`--progress` belongs to `models`, before the action)."""
    if action not in ("list", "download", "import"):
        raise ValueError(f"unknown models action {action!r}")
    return engine_command(python, "models", "--progress", progress, action, *args)
