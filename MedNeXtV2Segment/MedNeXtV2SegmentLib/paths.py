"""Where one run's exchange files live, and the names of what it creates.

Each run gets its own folder under the temp root, with plain ASCII file names: a volume named
"Tête (T1) / 2" or a 250-character Windows temp path must not break the export or the engine
(the field notes' "failed to load the segmentation" complaints). The folder is removed after a
successful run and kept, with its path shown to the user, after a failure. Removal deletes only
what the run created (a temp root may hold the user's own files).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

logger = logging.getLogger(__name__)

# Windows' MAX_PATH is 260; leave room for the engine's own temp names next to ours.
WINDOWS_PATH_BUDGET = 200


class PathError(ValueError):
    """A path we cannot use; the message names it and says what to change."""


@dataclass(frozen=True)
class RunPaths:
    work_dir: Path
    inputs: Tuple[Path, ...]  # one file per model input channel
    output: Path  # the engine writes the .seg.nrrd here (atomically)
    uncertainty: Path  # the uncertainty map, when asked for (`--uncertainty`)
    statistics: Path  # per-segment numbers (`--statistics`)

    def remove(self) -> None:
        """Delete what this run created - the exported inputs, the engine's outputs and their temporary
        siblings - then the folder if that left it empty. Anything else found there was put there by
        someone else, and stays (with the folder)."""
        outputs = (self.output, self.uncertainty, self.statistics)
        ours = {p.name for p in (*self.inputs, *outputs)}
        engine_temp = tuple(f".{p.name.split('.')[0]}." for p in outputs)  # mednextv2.atomic.temporary_sibling's names
        for entry in (self.work_dir.iterdir() if self.work_dir.is_dir() else ()):
            if entry.is_file() and not entry.is_symlink() and (entry.name in ours or entry.name.startswith(engine_temp)):
                entry.unlink()
        try:
            self.work_dir.rmdir()
        except OSError:
            if self.work_dir.exists():
                logger.warning("kept %s: it holds files this run did not create", self.work_dir)


def make_run_paths(n_channels: int = 1, temp_root: Optional[os.PathLike] = None,
                   prefix: str = "MedNeXtV2Segment", is_windows: bool = os.name == "nt") -> RunPaths:
    if n_channels < 1:
        raise PathError(f"a model needs at least one input channel, got {n_channels}")
    root = Path(temp_root) if temp_root is not None else Path(tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-", dir=root))
    inputs = tuple(work_dir / f"input_{c:04d}.nrrd" for c in range(n_channels))
    output = work_dir / "segmentation.seg.nrrd"  # never one of the inputs (input_NNNN.nrrd)
    if is_windows and len(str(output)) > WINDOWS_PATH_BUDGET:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise PathError(f"the temporary folder path is too long for Windows ({len(str(output))} characters): "
                        f"{work_dir}. Set a shorter temporary folder (e.g. C:\\Temp) in Slicer's settings.")
    return RunPaths(work_dir, inputs, output, work_dir / "uncertainty.nrrd", work_dir / "statistics.json")


def output_segmentation_name(volume_name: str, model_title: str) -> str:
    """Node name for a new result: '<volume> - <model>', as users expect in the Data module."""
    volume_name = volume_name.strip() or "Volume"
    model_title = model_title.strip()
    return f"{volume_name} - {model_title}" if model_title else f"{volume_name} segmentation"
