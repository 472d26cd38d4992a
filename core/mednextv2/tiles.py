"""Sliding-window tile placement: pure arithmetic, no torch.

Used by the predictor (sliding_window.py) and by the Slicer panel, which counts the tiles of a
volume to estimate a CPU run before starting it, in Slicer's own process where torch is not loaded.
"""
from __future__ import annotations

import itertools
import math
from typing import List, Sequence, Tuple


def tile_starts(size: int, patch: int, step: float) -> List[int]:
    """Evenly spaced starts, the first at 0 and the last touching the end; stride <= step * patch."""
    if size <= patch:
        return [0]
    n = int(math.ceil((size - patch) / (patch * step))) + 1
    stride = (size - patch) / (n - 1)
    return [int(round(i * stride)) for i in range(n)]


def tile_grid(shape: Sequence[int], patch: Sequence[int], step: float) -> List[Tuple[int, int, int]]:
    """Tile start corners (z, y, x) covering `shape` (each axis >= its patch size), z-major."""
    return list(itertools.product(*(tile_starts(s, p, step) for s, p in zip(shape, patch))))
