"""Each segment in numbers: voxels, volume, the input's intensity inside it, the model's confidence.

One row per (case, segment), keys in `COLUMNS` order, written as CSV or as JSON
({"format": "mednextv2-statistics", "version": 1, "rows": [...]}). Intensities are those of the
input's first channel in its own units (HU for CT; a multi-channel model's other channels are
not summarised). The confidence is the mean of the model's probability for the segment over its
voxels. A segment without voxels has voxels 0, volume 0 and null (CSV: empty) intensity and
confidence fields. The standard deviation is the population one (numpy's default, ddof=0).
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from mednextv2.atomic import atomic_path
from mednextv2.bundle import Label

PathLike = Union[str, "os.PathLike[str]"]
FORMAT = "mednextv2-statistics"
VERSION = 1
COLUMNS = ("case", "segment", "value", "voxels", "volume_ml", "intensity_mean", "intensity_std",
           "intensity_min", "intensity_max", "mean_confidence")


def top_probability(uncertainty: np.ndarray, n_classes: int) -> np.ndarray:
    """The largest class probability back from the uncertainty map (`preprocessing.class_uncertainty`
    = (1 - that probability) x K / (K - 1)): the model's probability for the voxel's label."""
    return 1.0 - uncertainty.astype(np.float64) * ((n_classes - 1) / n_classes)


def mean_confidence(labels: np.ndarray, uncertainty: np.ndarray, values: Sequence[int],
                    n_classes: int) -> Dict[int, Optional[float]]:
    """Each label value's mean confidence: the mean over its voxels of the model's probability for
    the voxel's class (the largest one, since the label is the argmax), recovered from the
    uncertainty map (`top_probability`); None for an empty segment."""
    flat = labels.ravel()
    n = max([int(flat.max()) if flat.size else 0] + list(values)) + 1
    counts = np.bincount(flat, minlength=n)
    sums = np.bincount(flat, weights=top_probability(uncertainty.ravel(), n_classes), minlength=n)
    return {v: (float(sums[v] / counts[v]) if counts[v] else None) for v in values}


def segment_statistics(labelmap: sitk.Image, labels: Sequence[Label], image: sitk.Image,
                       uncertainty: Optional[sitk.Image] = None, n_classes: int = 2, case: str = "") -> List[dict]:
    """Rows for every label of `labels` (listed even when empty), from the labelmap and the input
    image (`image`: the input's first channel, on the labelmap's grid); the confidence from the
    uncertainty map of an `n_classes` model (classes with background), null without a map."""
    lab = sitk.GetArrayViewFromImage(labelmap).ravel()
    intensity = sitk.GetArrayViewFromImage(image).ravel().astype(np.float64)
    values = [int(label.value) for label in labels]
    n = max([int(lab.max()) if lab.size else 0] + values) + 1
    counts = np.bincount(lab, minlength=n)
    sums = np.bincount(lab, weights=intensity, minlength=n)
    means = np.divide(sums, counts, out=np.zeros(n), where=counts > 0)
    squares = np.bincount(lab, weights=(intensity - means[lab]) ** 2, minlength=n)
    confidence = (mean_confidence(sitk.GetArrayViewFromImage(labelmap), sitk.GetArrayViewFromImage(uncertainty), values,
                                  n_classes) if uncertainty is not None else {})
    voxel_ml = float(np.prod(labelmap.GetSpacing())) / 1000.0
    extremes = sitk.LabelStatisticsImageFilter()
    extremes.Execute(sitk.Cast(image, sitk.sitkFloat64), labelmap)
    rows = []
    for label in labels:
        v = int(label.value)
        count = int(counts[v])
        row = {"case": case, "segment": label.name, "value": v, "voxels": count, "volume_ml": count * voxel_ml,
               "intensity_mean": None, "intensity_std": None, "intensity_min": None, "intensity_max": None,
               "mean_confidence": confidence.get(v)}
        if count:
            row.update(intensity_mean=float(means[v]), intensity_std=float(np.sqrt(squares[v] / count)),
                       intensity_min=float(extremes.GetMinimum(v)), intensity_max=float(extremes.GetMaximum(v)))
        rows.append(row)
    return rows


def statistics_text(rows: Sequence[dict], path: PathLike) -> str:
    """The file's content for `path`'s type: CSV (null -> empty cell) or JSON."""
    rows = [{k: row.get(k) for k in COLUMNS} for row in rows]
    if str(path).lower().endswith(".json"):
        return json.dumps({"format": FORMAT, "version": VERSION, "rows": rows}, indent=2) + "\n"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _csv_cell(v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def _csv_cell(value):
    """A CSV cell: null as empty; a text starting like a formula (a segment or case name from a
    bundle or a file name) quoted with a leading apostrophe, so a spreadsheet shows it as text."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def write_statistics(rows: Sequence[dict], path: PathLike) -> Path:
    """Write the rows to `path` (.csv or .json, by its suffix), atomically."""
    path = Path(path)
    text = statistics_text(rows, path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
