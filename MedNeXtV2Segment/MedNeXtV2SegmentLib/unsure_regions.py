"""Where to look first: connected regions of an uncertainty map above a threshold, largest first.

"Next unsure region" walks them: each call gives the largest region not visited yet. Labelling is
one `scipy.ndimage.label` pass plus a few `bincount`s over the voxels above the threshold (0.1 to
0.2 s on the 1 mm ICBM152 brain grid, Testing/benchmarks/bench_unsure_regions.py), done when the map
is loaded and when the threshold changes: short enough for the GUI thread, never per click.

Regions are 6-connected (face neighbours: a diagonal touch does not merge two regions). A region is
remembered as visited by one of its voxels, so after a threshold change the region that now holds
that voxel counts as visited (a lower threshold merges regions; a higher one splits them and keeps
the visited mark on the part that holds the voxel).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

import numpy as np

# The engine's map is (1 - max class probability) x K/(K-1) (docs/uncertainty.md). Above 0.5 the
# winning class holds less than 75% (two classes; 67% of three): a boundary the model hesitates
# over, not the faint background of a confident prediction (95% sure: 0.1 or less).
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class UnsureRegion:
    label: int  # in this labelling
    voxels: int
    target_ijk: Tuple[int, int, int]  # (i, j, k): the voxel at its centroid (on_region: a voxel of the region)
    target_ras: Tuple[float, float, float]  # the same point in the volume's RAS (before a parent transform)
    seed: int  # flat (k, j, i) index of the region's first voxel: how a visit is remembered


def _to_ras(ijk_to_ras: np.ndarray, ijk) -> np.ndarray:
    """(..., 3) voxel (i, j, k) -> RAS, without a BLAS call: on a busy computer BLAS's threads made
    the (N, 3) @ (3, 3) product take 0.03 to 0.5 s for a million voxels, these terms 0.05 to 0.1 s."""
    ijk = np.asarray(ijk, dtype=float)
    return (ijk[..., 0:1] * ijk_to_ras[:3, 0] + ijk[..., 1:2] * ijk_to_ras[:3, 1] + ijk[..., 2:3] * ijk_to_ras[:3, 2]
            + ijk_to_ras[:3, 3])


def find_regions(values: np.ndarray, ijk_to_ras: Sequence[Sequence[float]], threshold: float):
    """(regions, labels): regions of `values` (a (k, j, i) array) > threshold, largest first (ties: the
    first in memory order), and the label array they refer to."""
    from scipy import ndimage

    ijk_to_ras = np.asarray(ijk_to_ras, dtype=float)
    labels, count = ndimage.label(values > threshold)
    if count == 0:
        return [], labels
    flat = labels.ravel()
    inside = np.flatnonzero(flat)
    which = flat[inside]
    voxels = np.bincount(which, minlength=count + 1)
    k, j, i = np.unravel_index(inside, labels.shape)
    centroid = np.stack([np.bincount(which, weights=axis, minlength=count + 1) for axis in (i, j, k)], axis=1)
    centroid = centroid / np.maximum(voxels, 1)[:, None]
    _, first = np.unique(which, return_index=True)
    seeds = np.zeros(count + 1, dtype=np.int64)
    seeds[which[first]] = inside[first]
    order = sorted(range(1, count + 1), key=lambda n: (-voxels[n], seeds[n]))
    regions = []
    for n in order:
        target = tuple(int(round(c)) for c in centroid[n])  # on_region() moves it into the region if need be
        regions.append(UnsureRegion(int(n), int(voxels[n]), target, tuple(float(x) for x in _to_ras(ijk_to_ras, target)),
                                    int(seeds[n])))
    return regions, labels


def on_region(region: UnsureRegion, labels: np.ndarray, ijk_to_ras) -> UnsureRegion:
    """The region with its target on one of its own voxels: a curved region's centroid may lie
    outside it (then the slice views would show no part of it); the nearest voxel, in mm, is taken."""
    i, j, k = region.target_ijk
    if labels[k, j, i] == region.label:
        return region
    ijk_to_ras = np.asarray(ijk_to_ras, dtype=float)
    target = _nearest_voxel(labels, region.label, ijk_to_ras, np.asarray(region.target_ras))
    return replace(region, target_ijk=target, target_ras=tuple(float(x) for x in _to_ras(ijk_to_ras, target)))


def _nearest_voxel(labels: np.ndarray, label: int, ijk_to_ras: np.ndarray, point_ras: np.ndarray) -> Tuple[int, int, int]:
    """The region's voxel nearest (in mm) to a point: for the rare region whose centroid is outside it."""
    k, j, i = np.nonzero(labels == label)
    ras = _to_ras(ijk_to_ras, np.stack([i, j, k], axis=1))
    best = int(np.argmin(((ras - point_ras) ** 2).sum(axis=1)))
    return int(i[best]), int(j[best]), int(k[best])


def summary(regions: int, left: int, threshold: float) -> str:
    """The panel's line about the map's regions."""
    return f"{regions} unsure region(s) above {threshold:.2f}, {left} not visited yet."


class UnsureRegionTour:
    """The regions of one map at the current threshold, and which of them the user has seen."""

    def __init__(self, values: np.ndarray, ijk_to_ras, threshold: float = DEFAULT_THRESHOLD) -> None:
        self.values = values
        self.ijk_to_ras = np.asarray(ijk_to_ras, dtype=float)
        self.visited_seeds: List[int] = []
        self.threshold = threshold
        self.regions, self.labels = find_regions(values, self.ijk_to_ras, threshold)

    def set_threshold(self, threshold: float) -> None:
        if threshold != self.threshold:
            self.threshold = threshold
            self.regions, self.labels = find_regions(self.values, self.ijk_to_ras, threshold)

    def _visited_labels(self) -> set:
        flat = self.labels.ravel()
        return {int(flat[seed]) for seed in self.visited_seeds} - {0}

    def remaining(self) -> int:
        visited = self._visited_labels()
        return sum(1 for r in self.regions if r.label not in visited)

    def next(self) -> Optional[UnsureRegion]:
        """The largest region not visited yet (now marked visited), or None when all were."""
        visited = self._visited_labels()
        for region in self.regions:
            if region.label not in visited:
                self.visited_seeds.append(region.seed)
                return on_region(region, self.labels, self.ijk_to_ras)
        return None
