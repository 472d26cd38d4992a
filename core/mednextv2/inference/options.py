"""`SegmentOptions`: every choice of a segmentation run, checked once, here.

The CLI (its `segment` arguments are made from the fields' metadata), the Python API
(`mednextv2.segment(..., **options)`) and the Slicer module all build this object, so a value refused by one is refused by all, with the same message. Light on
purpose (no torch): the Slicer module imports it to check the panel before starting the engine.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

from mednextv2.errors import InputError
from mednextv2.option_fields import cli
from mednextv2.progress import MODES, null_progress
from mednextv2.threads import check_threads

DEVICES = ("auto", "cuda", "mps", "cpu")
_DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)\Z")
# Below 0.1 the tile count grows as 1/step^3 (1.4 million tiles, 71 h at 0.05 on a CT scan) for
# no measurable gain: nnU-Net uses 0.5, and 0.25 already averages every voxel over 64 tiles.
MIN_STEP = 0.1


def check_step(step: float, what: str = "--step") -> float:
    """The sliding-window step as a fraction of the patch, in [MIN_STEP, 1]; InputError otherwise."""
    try:
        value = float(step)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number in [{MIN_STEP}, 1], got {step!r}") from None
    if not (math.isfinite(value) and MIN_STEP <= value <= 1):
        raise InputError(f"{what} must be in [{MIN_STEP}, 1] (a fraction of the patch; 0.5 is the usual), got {step}")
    return value


UNCERTAINTY_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".mha")
STATISTICS_SUFFIXES = (".csv", ".json")
# Batch mode: the uncertainty map of case CASE is written as CASE + this, in the --uncertainty folder.
UNCERTAINTY_CASE_SUFFIX = ".uncertainty.nrrd"


def check_uncertainty_output(path: str, what: str = "--uncertainty") -> str:
    """The uncertainty map's file name: a float image (.nrrd/.nii.gz/.nii/.mha, not a .seg.nrrd),
    or an existing folder (batch mode); InputError otherwise."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise InputError(f"{what} must be a file name (.nrrd, .nii.gz, .nii, .mha) or a folder, got {path!r}")
    name = os.path.basename(os.fspath(path)).lower()
    if os.path.isdir(path):
        return os.fspath(path)
    if name.endswith(".seg.nrrd") or not name.endswith(UNCERTAINTY_SUFFIXES):
        raise InputError(f"{what} {path}: the uncertainty map is a float image; give a .nrrd, .nii.gz, .nii or "
                         ".mha file name (not .seg.nrrd), or an existing folder in batch mode")
    return os.fspath(path)


def check_statistics_output(path: str, what: str = "--statistics") -> str:
    """The statistics file's name: .csv or .json; InputError otherwise."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise InputError(f"{what} must be a .csv or .json file name, got {path!r}")
    if os.path.isdir(path) or not os.fspath(path).lower().endswith(STATISTICS_SUFFIXES):
        raise InputError(f"{what} {path}: give a .csv or .json file name")
    return os.fspath(path)


@dataclass(frozen=True)
class SegmentOptions:
    """One field per `mednextv2 segment` option (the CLI's arguments are made from the metadata)."""

    device: str = field(default="auto", metadata=cli(  # the Python API also takes cuda:N and a torch.device
        "where the network runs: auto (default: CUDA, then Apple MPS, then CPU), cuda, mps or cpu", choices=DEVICES))
    tta: bool = field(default=True, metadata=cli(  # mirroring over the bundle's mirror axes
        "mirroring test-time augmentation (default; up to 8x slower)", off_help="no mirroring"))
    step: Optional[float] = field(default=None, metadata=cli(  # None: the bundle's
        f"tile step as a fraction of the patch, in [{MIN_STEP}, 1]; default: the bundle's (0.5)", metavar="S"))
    fast: bool = field(default=False, metadata=cli(  # see preprocessing.fast_spacing
        "coarser grid (2x the target spacing in-plane), no TTA: for CPUs"))
    structures: Optional[Tuple[str, ...]] = field(default=None, metadata=cli(  # label names
        "keep only these structures", metavar="NAME"))
    largest_component: bool = field(default=False, metadata=cli("keep each structure's largest component"))
    tile_batch: Optional[int] = field(default=None, metadata=cli(  # None: per device default
        "tiles per forward pass", metavar="N"))
    threads: Optional[int] = field(default=None, metadata=cli(  # None: mednextv2.threads decides
        "CPU threads (default: the cores free when tiles run, re-checked as the load changes)", metavar="N"))
    # Extra outputs (files written beside the result; see docs/uncertainty.md):
    uncertainty: Optional[str] = field(default=None, metadata=cli(
        "also write the per-voxel uncertainty map (float 0-1: 0 sure, 1 all classes equally likely; from "
        "the passes already made) on the input's grid: .nrrd/.nii.gz/.nii/.mha; in batch "
        f"mode an existing folder, where each case's map is CASE{UNCERTAINTY_CASE_SUFFIX}", metavar="MAP"))
    statistics: Optional[str] = field(default=None, metadata=cli(
        "also write per-segment statistics (voxels, volume_ml, the input's intensity mean/std/min/max "
        "inside, mean confidence) as .csv or .json; one row per case and segment in batch mode", metavar="FILE"))
    # The command line names a mode (progress.make_progress turns it into the callable).
    progress: Callable[..., None] = field(default=null_progress, compare=False, metadata=cli(
        "progress as a bar on stderr (default), JSON lines on stdout, or none", type=str, default="bar",
        choices=MODES))

    def __post_init__(self) -> None:
        if not (hasattr(self.device, "type") or _DEVICE.match(str(self.device).lower())):  # a torch.device passes
            raise InputError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {self.device!r}")
        if self.step is not None:
            object.__setattr__(self, "step", check_step(self.step))
        if self.structures is not None:
            names = (self.structures,) if isinstance(self.structures, str) else tuple(self.structures)
            for name in names:
                # a name starting with '-' would be read as an option on the command line
                if not isinstance(name, str) or not name.strip() or name.startswith("-"):
                    raise InputError(f"structure names must be non-empty and not start with '-', got {name!r}")
            object.__setattr__(self, "structures", names or None)
        if self.tile_batch is not None and (isinstance(self.tile_batch, bool) or int(self.tile_batch) != self.tile_batch
                                            or self.tile_batch < 1):
            raise InputError(f"--tile-batch must be a whole number of at least 1, got {self.tile_batch}")
        check_threads(self.threads)
        if self.uncertainty is not None:
            object.__setattr__(self, "uncertainty", check_uncertainty_output(self.uncertainty))
        if self.statistics is not None:
            object.__setattr__(self, "statistics", check_statistics_output(self.statistics))
        if not callable(self.progress):
            raise InputError(f"progress must be a callable, got {self.progress!r}")
