"""Check every case of a dataset before training starts, and report all problems at once.

A training run that dies after an hour on case 37's mismatched label is the failure this
prevents: images are read header-only, labels fully (their values must be checked).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from mednextv2.errors import InputError
from mednextv2.inference.nifti import check_nifti_file, is_nifti_path
from mednextv2.train.datasets import Case, Dataset

log = logging.getLogger(__name__)

SPACING_RTOL = 1e-3  # relative, per axis
ORIGIN_TOL_VOXELS = 0.05  # origin may differ by this fraction of the smallest voxel side
DIRECTION_ATOL = 1e-3
MAX_LABEL_VALUES = 255  # more distinct values than this is an image given as a label


@dataclass(frozen=True)
class CaseInfo:
    name: str
    size_zyx: Tuple[int, int, int]
    spacing_zyx: Tuple[float, float, float]
    label_values: Tuple[int, ...]


@dataclass(frozen=True)
class ValidatedDataset:
    dataset: Dataset
    labels: Dict[int, str]  # value -> name for every foreground value, background excluded
    infos: Tuple[CaseInfo, ...]

    @property
    def n_channels(self) -> int:
        return len(self.dataset.cases[0].images)

    @property
    def background_only(self) -> Tuple[str, ...]:
        """Cases whose label map holds no foreground: training negatives; never validation
        cases, where Dice is undefined (run.split_cases)."""
        return tuple(i.name for i in self.infos if not any(v != 0 for v in i.label_values))


def _header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def _grid_problems(what: str, ref, other) -> List[str]:
    problems = []
    if tuple(other.GetSize()) != tuple(ref.GetSize()):
        return [f"{what} size {tuple(other.GetSize())} differs from the image's {tuple(ref.GetSize())}"]
    ref_sp, sp = np.array(ref.GetSpacing()), np.array(other.GetSpacing())
    if not np.allclose(sp, ref_sp, rtol=SPACING_RTOL, atol=0):
        problems.append(f"{what} spacing {tuple(np.round(sp, 4))} differs from the image's {tuple(np.round(ref_sp, 4))}")
    tol = ORIGIN_TOL_VOXELS * float(ref_sp.min())
    shift = float(np.abs(np.array(other.GetOrigin()) - np.array(ref.GetOrigin())).max())
    if shift > tol:
        problems.append(f"{what} origin is {shift:.3g} mm away from the image's (tolerance {tol:.3g} mm)")
    if not np.allclose(other.GetDirection(), ref.GetDirection(), atol=DIRECTION_ATOL):
        problems.append(f"{what} direction differs from the image's")
    return problems


def _read_label_values(path: Path) -> Tuple[Optional[np.ndarray], List[str]]:
    image = sitk.ReadImage(str(path))
    if image.GetNumberOfComponentsPerPixel() != 1:
        return None, [f"label {path.name} has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                      "(overlapping segments?); export it as a single labelmap"]
    array = sitk.GetArrayViewFromImage(image)
    values = np.unique(array)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            return None, [f"label {path.name} holds non-integer values (e.g. {values[values != np.round(values)][:3].tolist()}); "
                          "labels must be integer class values"]
    if len(values) > MAX_LABEL_VALUES:
        return None, [f"label {path.name} has {len(values)} distinct values; is it an image rather than a label map?"]
    if values.min() < 0:
        return None, [f"label {path.name} has negative values {values[values < 0][:5].tolist()}"]
    return values.astype(np.int64), []


def _check_case(case: Case, known: Dict[int, str]) -> Tuple[Optional[CaseInfo], List[str]]:
    problems: List[str] = []
    headers = []
    for path in (*case.images, case.label):
        if not path.is_file():
            problems.append(f"file {path} " + ("is not a regular file (a pipe, socket, device or folder)"
                                               if path.exists() else "does not exist"))
            continue
        try:
            if is_nifti_path(path):
                check_nifti_file(path)  # a truncated file, zero pixdim or NaN voxels, which ITK lets pass
            headers.append((path, _header(path)))
        except InputError as e:
            problems.append(str(e))
        except RuntimeError as e:
            problems.append(f"cannot read {path.name}: {str(e).strip().splitlines()[-1]}")
    if problems:
        return None, problems
    ref = headers[0][1]
    for path, header in headers:
        if header.GetDimension() != 3:
            problems.append(f"{path.name} is {header.GetDimension()}D; a 3D volume is needed")
        elif path != case.label and header.GetNumberOfComponents() != 1:
            problems.append(f"{path.name} has {header.GetNumberOfComponents()} components per voxel; give one file per channel")
    if problems:
        return None, problems
    for i, (path, header) in enumerate(headers[1:-1], start=1):
        problems += _grid_problems(f"channel {i} ({path.name})", ref, header)
    problems += _grid_problems(f"label {case.label.name}", ref, headers[-1][1])
    values, value_problems = _read_label_values(case.label)
    problems += value_problems
    if values is not None and known:
        unknown = [int(v) for v in values if v != 0 and int(v) not in known]
        if unknown:
            problems.append(f"label {case.label.name} has values {unknown} not in the dataset's labels {sorted(known)}")
    if problems:
        return None, problems
    size = tuple(int(s) for s in reversed(ref.GetSize()))
    spacing = tuple(float(s) for s in reversed(ref.GetSpacing()))
    return CaseInfo(case.name, size, spacing, tuple(int(v) for v in values)), []


def _segment_names(path: Path) -> Dict[int, str]:
    """Segment names written by 3D Slicer into a .seg.nrrd header (Segment<i>_Name, _LabelValue),
    or by `mednextv2 segment` into the `NAME.labels.json` beside a labelmap."""
    if not path.name.lower().endswith(".seg.nrrd"):
        return _label_table_names(path)
    reader = _header(path)
    names = {}
    for key in reader.GetMetaDataKeys():
        if key.startswith("Segment") and key.endswith("_Name"):
            prefix = key[: -len("_Name")]
            value_key = prefix + "_LabelValue"
            if reader.HasMetaDataKey(value_key):
                names[int(reader.GetMetaData(value_key))] = reader.GetMetaData(key)
    return names


def _label_table_names(labelmap: Path) -> Dict[int, str]:
    from mednextv2.inference.export import known_suffix, label_table_path

    if not known_suffix(labelmap):
        return {}
    table = label_table_path(labelmap)
    try:
        rows = json.loads(table.read_text(encoding="utf-8")).get("labels", []) if table.is_file() else []
        return {int(r["value"]): str(r["name"]) for r in rows if isinstance(r, dict) and str(r.get("name", "")).strip()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        log.warning("%s: not a readable label table; its names are not used", table)
        return {}


def validate_dataset(dataset: Dataset) -> ValidatedDataset:
    """Every case checked; InputError listing each problem with its case name, else the label table."""
    problems: List[str] = []
    counts = [len(c.images) for c in dataset.cases]
    expected = len(dataset.channels) or max(set(counts), key=counts.count)
    for case in dataset.cases:
        if len(case.images) != expected:
            problems.append(f"case {case.name}: {len(case.images)} image channel(s), expected {expected} like the other cases")
    infos = []
    for case in dataset.cases:
        info, case_problems = _check_case(case, dataset.labels)
        problems += [f"case {case.name}: {p}" for p in case_problems]
        if info:
            infos.append(info)
    if problems:
        raise InputError(f"dataset {dataset.source}: {len(problems)} problem(s) in "
                         f"{len({p.split(':')[0] for p in problems})} case(s):\n  " + "\n  ".join(problems))
    labels = dict(dataset.labels)
    if not labels:
        for case in dataset.cases:
            labels.update({v: n for v, n in _segment_names(case.label).items() if v != 0 and v not in labels})
        for value in sorted({v for info in infos for v in info.label_values if v != 0}):
            labels.setdefault(value, f"label {value}")
    present = {v for info in infos for v in info.label_values}
    missing = [f"{v} ({n})" for v, n in labels.items() if v not in present]
    if missing:
        log.warning("labels never present in any case: %s; their Dice will be undefined", ", ".join(missing))
    if not any(v != 0 for v in present):
        raise InputError(f"dataset {dataset.source}: every label map is empty (background only); nothing to learn")
    checked = ValidatedDataset(dataset=dataset, labels=dict(sorted(labels.items())), infos=tuple(infos))
    if checked.background_only:
        log.warning("case(s) %s: the label map is background only; used for training only (a validation case "
                    "needs foreground for its Dice)", ", ".join(checked.background_only))
    return checked
