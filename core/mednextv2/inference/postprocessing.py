"""Optional clean-up of a label array on the input grid: a subset of structures, largest components."""
from __future__ import annotations

from typing import Iterable, List, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from mednextv2.bundle import Label
from mednextv2.errors import InputError


def select_structures(labels: Sequence[Label], names: Iterable[str]) -> List[Label]:
    """The labels named in `names` (case-insensitive), in model order; unknown names are an error."""
    wanted = {n.strip().lower(): n for n in names}
    by_name = {lab.name.lower(): lab for lab in labels}
    unknown = [original for key, original in wanted.items() if key not in by_name]
    if unknown:
        raise InputError(f"unknown structure(s) {', '.join(unknown)}; this model has: "
                         f"{', '.join(lab.name for lab in labels)}")
    return [lab for lab in labels if lab.name.lower() in wanted]


def keep_values(array: np.ndarray, values: Iterable[int]) -> np.ndarray:
    """Set every label not in `values` to background, in place."""
    keep = np.zeros(int(array.max()) + 1, dtype=bool)
    for v in values:
        if v < keep.size:
            keep[v] = True
    keep[0] = True
    array[~keep[array]] = 0
    return array


def _bbox(mask: np.ndarray) -> Tuple[slice, ...]:
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        out.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(out)


def keep_largest_component(array: np.ndarray, values: Iterable[int]) -> np.ndarray:
    """For each label value, keep only its largest 26-connected component (in place).

    Works inside each label's bounding box, so memory follows the structure, not the volume.
    """
    for value in values:
        mask = array == value
        if not mask.any():
            continue
        box = _bbox(mask)
        sub = mask[box]
        components = sitk.GetArrayFromImage(
            sitk.ConnectedComponent(sitk.GetImageFromArray(sub.astype(np.uint8)), True))
        if components.max() <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        region = array[box]
        region[(components != int(sizes.argmax())) & sub] = 0
    return array
