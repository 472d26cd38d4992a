"""Preprocess every case once into memory-mapped .npy arrays on the network grid.

The segment pipeline's own `preprocess` makes the arrays, so training sees exactly what
inference will see. Each case is keyed by its files (path, size, mtime) and the plan's
preprocessing; a changed file or plan rebuilds only what changed.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from mednextv2.atomic import atomic_path, write_bytes
from mednextv2.errors import ResourceError
from mednextv2.inference.image_io import read_channels, read_image
from mednextv2.inference.preprocessing import labels_to_network_grid, preprocess
from mednextv2.train.datasets import Case
from mednextv2.train.planning import TrainingPlan

log = logging.getLogger(__name__)

FOREGROUND_SAMPLES = 10_000  # stored locations per class and case, for foreground oversampling


@dataclass(frozen=True)
class CachedCase:
    name: str
    folder: Path
    shape: Tuple[int, int, int]
    classes: Tuple[int, ...]  # head rows present (foreground only)

    def image(self) -> np.ndarray:
        """(C, z, y, x) float32, memory-mapped."""
        return np.load(self.folder / f"{self.name}_image.npy", mmap_mode="r")

    def label(self) -> np.ndarray:
        """(z, y, x) uint8 head rows, memory-mapped."""
        return np.load(self.folder / f"{self.name}_label.npy", mmap_mode="r")

    def foreground(self) -> np.ndarray:
        """(N, 4) int32 rows (class, z, y, x) sampled per class."""
        return np.load(self.folder / f"{self.name}_fg.npy")


def _case_key(case: Case, plan: TrainingPlan) -> str:
    parts = [json.dumps(plan.preprocessing_plan().to_json(), sort_keys=True), plan.label_rows()]
    for path in (*case.images, case.label):
        st = path.stat()
        parts.append([str(path.resolve()), st.st_size, int(st.st_mtime_ns)])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _save_npy(path: Path, array: np.ndarray) -> None:
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, array)
    except OSError as e:
        raise ResourceError(f"cannot write the preprocessed cache {path}: {e}") from e


def foreground_locations(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rows = []
    for cls in np.unique(label):
        if cls == 0:
            continue
        coords = np.argwhere(label == cls)
        if len(coords) > FOREGROUND_SAMPLES:
            coords = coords[rng.choice(len(coords), FOREGROUND_SAMPLES, replace=False)]
        rows.append(np.concatenate([np.full((len(coords), 1), cls), coords], axis=1))
    return np.concatenate(rows).astype(np.int32) if rows else np.zeros((0, 4), np.int32)


def _build_case(case: Case, plan: TrainingPlan, folder: Path) -> CachedCase:
    images = read_channels(case.images, len(case.images))
    pre = preprocess(images, plan.preprocessing_plan())
    raw = labels_to_network_grid(read_image(case.label, allow_constant=True), pre.record)
    # Unlisted values are background; the dataset check already refused them when names were given.
    label = plan.map_labels(raw)
    _save_npy(folder / f"{case.name}_image.npy", pre.data.astype(np.float32, copy=False))
    _save_npy(folder / f"{case.name}_label.npy", label)
    fg = foreground_locations(label, np.random.default_rng(0))
    _save_npy(folder / f"{case.name}_fg.npy", fg)
    return CachedCase(case.name, folder, tuple(int(s) for s in label.shape), tuple(sorted({int(c) for c in fg[:, 0]})))


def build_cache(cases: Sequence[Case], plan: TrainingPlan, folder: Path,
                report: Optional[Callable[..., None]] = None) -> List[CachedCase]:
    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / "cache.json"
    index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.exists() else {}
    out = []
    for i, case in enumerate(cases):
        key = _case_key(case, plan)
        entry = index.get(case.name)
        if entry and entry["key"] == key and (folder / f"{case.name}_image.npy").exists():
            out.append(CachedCase(case.name, folder, tuple(entry["shape"]), tuple(entry["classes"])))
        else:
            cached = _build_case(case, plan, folder)
            index[case.name] = {"key": key, "shape": list(cached.shape), "classes": list(cached.classes)}
            write_bytes(index_path, json.dumps(index, indent=1).encode("utf-8"))
            out.append(cached)
            log.debug("cached %s: shape %s, classes %s", case.name, cached.shape, cached.classes)
        if report:
            report("preprocess", (i + 1) / len(cases), f"case {case.name}")
    return out
