"""Command lines and environment for running `mednextv2` with Slicer's Python.

The engine is started as `<python> -m mednextv2 ...` in the folder of the engine that ships with
these modules (engine_client.py: `-m` puts the working directory first on the child's sys.path;
the folder is also on its PYTHONPATH): the extension's qt-scripted-modules folder when installed
(the top-level CMakeLists.txt copies core/mednextv2 there), or core/ in a source checkout. It is
found from this file's location, never from `import mednextv2`: Slicer *appends* module paths
to sys.path, so a `mednextv2` pip-installed into Slicer's site-packages would otherwise win.
`use_shipped_engine()` puts the same folder first on the panel's own sys.path.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from .parameters import SegmentChoices


def find_slicer_python() -> str:
    """PythonSlicer inside Slicer (as slicer.util.executePythonModule does), else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def engine_package_dir(module_file: Optional[str] = None) -> Path:
    """The folder holding the `mednextv2` package shipped with these modules."""
    lib_dir = Path(module_file or __file__).resolve().parent  # .../MedNeXtV2SegmentLib
    candidates = (lib_dir.parent, lib_dir.parent.parent / "core")  # installed, source checkout
    for folder in candidates:
        if (folder / "mednextv2" / "__init__.py").is_file():
            return folder
    raise RuntimeError(f"The MedNeXtV2 engine is missing: no mednextv2 package in {' or '.join(map(str, candidates))}. "
                       "Reinstall the MedNeXtV2 extension.")


def use_shipped_engine(package_dir: Optional[Path] = None) -> Path:
    """Make `import mednextv2` in Slicer's process load the shipped engine; returns its folder.

    Puts the folder first on sys.path and forgets a `mednextv2` already imported from elsewhere."""
    folder = str(package_dir or engine_package_dir())
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)
    loaded = sys.modules.get("mednextv2")
    if loaded is not None and not str(Path(getattr(loaded, "__file__", "") or "").resolve()).startswith(
            str(Path(folder).resolve())):
        for name in [n for n in sys.modules if n == "mednextv2" or n.startswith("mednextv2.")]:
            del sys.modules[name]
    return Path(folder)


def engine_threads(usable_cores: Optional[int] = None) -> int:
    """Threads for the engine: all usable cores but one, so Slicer keeps rendering."""
    if usable_cores is None:
        usable_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, usable_cores - 1)


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
                          options: SegmentChoices, threads: Optional[int] = None,
                          uncertainty: Optional[os.PathLike] = None,
                          statistics: Optional[os.PathLike] = None) -> List[str]:
    """`mednextv2 segment INPUT... -m MODEL -o OUTPUT ... --progress json`; inputs are the channels.
    `uncertainty`: where the map goes, required when `options.uncertainty` and used only then;
    `statistics`: where the per-segment numbers go (JSON), if given."""
    options.validated()
    if not inputs:
        raise ValueError("at least one input image is needed")
    if options.uncertainty and uncertainty is None:
        raise ValueError("the uncertainty option needs a path for the map")
    # Flags spelled from the engine's own option fields, so a renamed option cannot drift here;
    # imported here because this file is imported before use_shipped_engine().
    from mednextv2.inference.options import SegmentOptions
    from mednextv2.option_fields import option_arguments

    args = ["segment", *[os.fspath(p) for p in inputs], "-m", options.model, "-o", os.fspath(output)]
    args += option_arguments(SegmentOptions, device=options.device, tta=options.tta, fast=options.fast,
                             step=None if options.step is None else f"{float(options.step):g}",
                             structures=options.structures,
                             threads=None if threads is None else int(threads),
                             uncertainty=os.fspath(uncertainty) if options.uncertainty else None,
                             statistics=None if statistics is None else os.fspath(statistics), progress="json")
    return engine_command(python, *args)


def device_probe_command(python: str) -> List[str]:
    """Asks the engine's Python whether torch sees a CUDA GPU (prints `{"cuda": true|false}`); run
    as a child process, so torch is never imported into Slicer's own process for it."""
    return [python, "-c", "import json, torch; print(json.dumps({'cuda': bool(torch.cuda.is_available())}))"]


def build_models_command(python: str, action: str, *args: str, progress: str = "json") -> List[str]:
    """`mednextv2 models --progress json ACTION ...` (`--progress` belongs to `models`, before the action)."""
    if action not in ("list", "download", "import"):
        raise ValueError(f"unknown models action {action!r}")
    return engine_command(python, "models", "--progress", progress, action, *args)
