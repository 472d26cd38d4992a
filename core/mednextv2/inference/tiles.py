"""Sliding-window tile placement: pure arithmetic, no torch.

Used by the predictor (sliding_window.py) and by the Slicer panel, which counts the tiles of a
volume to estimate a CPU run before starting it, in Slicer's own process where torch is not loaded.
"""
from __future__ import annotations

import itertools
import math
from typing import List, Optional, Sequence, Tuple


def tile_starts(size: int, patch: int, step: float) -> List[int]:
    """Evenly spaced starts, the first at 0 and the last touching the end; stride <= step * patch."""
    if size <= patch:
        return [0]
    n = int(math.ceil((size - patch) / (patch * step))) + 1
    stride = (size - patch) / (n - 1)
    return [int(round(i * stride)) for i in range(n)]


def tile_grid(shape: Sequence[int], patch: Sequence[int], step: float, major: int = 0) -> List[Tuple[int, int, int]]:
    """Tile start corners (z, y, x) covering `shape` (each axis >= its patch size), ordered by
    their start along `major` first, then along the other axes in (z, y, x) order (major 0: z-major)."""
    starts = [tile_starts(s, p, step) for s, p in zip(shape, patch)]
    order = [major] + [a for a in range(len(starts)) if a != major]
    corners = []
    for combination in itertools.product(*(starts[a] for a in order)):
        corner = [0] * len(starts)
        for a, start in zip(order, combination):
            corner[a] = start
        corners.append(tuple(corner))
    return corners


def stream_axis(shape: Sequence[int], patch: Sequence[int], step: float) -> Optional[int]:
    """The axis along which tiles run in order so that the rows behind them are finished early:
    the one whose patch covers the smallest part of the grid (the first such axis on ties), among
    the axes with more than one tile; None when every axis has one tile. Tiles that run along
    it touch at most `patch` rows of it at a time: the stitching window."""
    candidates = [(p / s, a) for a, (s, p) in enumerate(zip(shape, patch)) if len(tile_starts(s, p, step)) > 1]
    return min(candidates)[1] if candidates else None
