"""Per-case checks before export: geometry mismatch, empty segmentations, different segment sets.

Errors stop the export (the case would teach the network nothing or something wrong); warnings
are shown and the case is kept. The facts come from the scene (or from files) as plain data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Geometry:
    """A voxel grid in world coordinates: size (i, j, k), spacing, origin, 3x3 direction (row-major)."""

    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def index_of(self, point: Sequence[float]) -> np.ndarray:
        """Continuous voxel index (i, j, k) of a world point."""
        axes = np.array(self.direction, dtype=float).reshape(3, 3) * np.array(self.spacing, dtype=float)
        return np.linalg.solve(axes, np.array(point, dtype=float) - np.array(self.origin, dtype=float))

    def same_lattice(self, other: "Geometry", tolerance: float = 1e-3) -> bool:
        """Same voxel lattice, possibly another extent: a segmentation saved cropped to its segments
        (as .seg.nrrd files usually are) lies on its volume's voxels and needs no resampling."""
        scale = max(min(self.spacing), 1e-6)
        if any(abs(a - b) > tolerance * scale for a, b in zip(self.spacing, other.spacing)):
            return False
        if any(abs(a - b) > tolerance for a, b in zip(self.direction, other.direction)):
            return False
        offset = self.index_of(other.origin)
        return bool(np.all(np.abs(offset - np.round(offset)) < 1e-2))

    def differences(self, other: "Geometry", tolerance: float = 1e-3) -> List[str]:
        """What differs, in words (empty on the same lattice); spacing/origin relative to the voxel size."""
        if self.same_lattice(other, tolerance):
            return []
        found = []
        if tuple(self.size) != tuple(other.size):
            found.append(f"size {list(self.size)} vs {list(other.size)}")
        scale = max(min(self.spacing), 1e-6)
        if any(abs(a - b) > tolerance * scale for a, b in zip(self.spacing, other.spacing)):
            found.append(f"spacing {_fmt(self.spacing)} vs {_fmt(other.spacing)}")
        if any(abs(a - b) > 1e-2 * scale for a, b in zip(self.origin, other.origin)):
            found.append(f"origin {_fmt(self.origin)} vs {_fmt(other.origin)}")
        if any(abs(a - b) > tolerance for a, b in zip(self.direction, other.direction)):
            found.append("orientation")
        return found


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


@dataclass(frozen=True)
class CaseFacts:
    """What the checks need to know about one case.

    `segment_voxels`: voxel count of each segment after export onto the volume's grid, in the
    segmentation's order. `segmentation_geometry`: the grid the segmentation was drawn on, when known.
    """

    case: str
    volume_geometry: Geometry
    segment_voxels: Dict[str, int]
    segmentation_geometry: Optional[Geometry] = None
    transformed: bool = False


@dataclass(frozen=True)
class Problem:
    case: str
    severity: str
    message: str

    def __str__(self) -> str:
        return f"{self.case}: {self.message}"


def check_case(facts: CaseFacts, all_segment_names: Sequence[str]) -> List[Problem]:
    found: List[Problem] = []

    def add(severity: str, message: str) -> None:
        found.append(Problem(facts.case, severity, message))

    if not facts.segment_voxels:
        add(ERROR, "the segmentation has no segments")
    elif sum(facts.segment_voxels.values()) == 0:
        add(ERROR, "the segmentation is empty on this volume's grid (nothing drawn, or drawn outside the volume)")
    else:
        empty = [name for name, count in facts.segment_voxels.items() if count == 0]
        if empty:
            add(WARNING, f"empty segment(s) {', '.join(empty)}: they will count as background in this case")
    if facts.segmentation_geometry is not None:
        diffs = facts.volume_geometry.differences(facts.segmentation_geometry)
        if diffs:
            add(WARNING, "the segmentation was drawn on a different grid (" + "; ".join(diffs)
                + "); it will be resampled onto the volume, check thin structures")
    if facts.transformed:
        add(WARNING, "the volume or segmentation has a parent transform; the case is exported in the "
                     "volume's own coordinates (harden the transform if the segmentation was aligned to a moved volume)")
    missing = [name for name in all_segment_names if name not in facts.segment_voxels]
    if facts.segment_voxels and missing:
        add(WARNING, f"no segment named {', '.join(missing)} (other cases have it): "
                     "those structures count as background here unless you rename or leave the label out")
    return found


def check_cases(cases: Sequence[CaseFacts], all_segment_names: Sequence[str]) -> List[Problem]:
    """Every problem of every case, plus dataset-level ones (no case, one case, duplicate names)."""
    found: List[Problem] = []
    for facts in cases:
        found.extend(check_case(facts, all_segment_names))
    names = [c.case for c in cases]
    for name in sorted({n for n in names if names.count(n) > 1}):
        found.append(Problem(name, ERROR, "two cases have this name; rename one"))
    if not cases:
        found.append(Problem("dataset", ERROR, "no case to train on: tick at least one case"))
    elif len(cases) == 1:
        found.append(Problem("dataset", WARNING, one_case_note()))
    return found


def one_case_note() -> str:
    """The engine trains on one case (train/run.split_cases); what a second would add."""
    from mednextv2.train.options import DEFAULT_VAL_FRACTION, MIN_CASES_TO_HOLD_OUT  # torch-free

    return ("one case: the model trains on it and holds nothing out, so it gets no held-out Dice. A second case "
            "adds variety the model learns from (another patient, scanner or contrast) and lets a validation "
            f"share (settings page) hold one out for a Dice score; from {MIN_CASES_TO_HOLD_OUT} cases on, "
            f"{DEFAULT_VAL_FRACTION:.0%} are held out by default")


def has_errors(problems: Sequence[Problem]) -> bool:
    return any(p.severity == ERROR for p in problems)
