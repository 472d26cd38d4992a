"""Write training cases as an nnU-Net raw dataset folder, the layout `mednextv2 train` reads.

    DATASET/dataset.json
    DATASET/imagesTr/<case>_0000.nrrd
    DATASET/labelsTr/<case>.nrrd

Each case's labelmap arrives with its own values (value i+1 = the case's i-th segment, the order
Slicer's ExportSegmentsToLabelmapNode uses) and is rewritten with the dataset's values, so a value
means the same structure in every case. The folder is built under a temporary name and renamed
when complete: an interrupted export never leaves a half-written dataset behind.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Union

import numpy as np
from mednextv2.atomic import default_mode, replace_folder, temporary_sibling

from MedNeXtV2TrainLib.label_table import DatasetLabel

logger = logging.getLogger(__name__)
FILE_ENDING = ".nrrd"


class DatasetExportError(ValueError):
    """A case cannot be written as training data; the message names the case and the fix."""


def safe_case_ids(names: Sequence[str]) -> List[str]:
    """File-name-safe, unique case ids in the given order ("CT chest" -> "CT_chest", repeats get _2, _3)."""
    ids: List[str] = []
    for name in names:
        base = re.sub(r"[^A-Za-z0-9-]+", "_", name).strip("_") or "case"
        candidate, n = base, 2
        while candidate.lower() in (i.lower() for i in ids):
            candidate, n = f"{base}_{n}", n + 1
        ids.append(candidate)
    return ids


def remap_labels(array: np.ndarray, local_names: Sequence[str], value_by_segment: Dict[str, int]) -> np.ndarray:
    """Case values (i+1 = local_names[i]) -> dataset values; segments not in the table become background."""
    top = int(array.max()) if array.size else 0
    if int(array.min(initial=0)) < 0 or top > len(local_names):
        raise DatasetExportError(f"labelmap has values up to {top} but only {len(local_names)} segment name(s) "
                                 f"{list(local_names)}; export it with one value per segment")
    lookup = np.zeros(len(local_names) + 1, dtype=np.uint16)
    for i, name in enumerate(local_names):
        lookup[i + 1] = value_by_segment.get(name, 0)
    out = lookup[array.astype(np.int64)]
    return out.astype(np.uint8) if int(lookup.max()) < 256 else out


def _same_grid(a: "sitk.Image", b: "sitk.Image") -> bool:
    scale = max(min(a.GetSpacing()), 1e-6)
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-3 * scale)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-2 * scale)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4))


ImageSource = Union[str, os.PathLike, "sitk.Image"]  # SimpleITK is imported when a case is written


def _as_image(source: ImageSource, case_id: str) -> "sitk.Image":
    import SimpleITK as sitk

    if isinstance(source, sitk.Image):
        return source
    try:
        return sitk.ReadImage(str(source))
    except RuntimeError as e:
        raise DatasetExportError(f"case {case_id}: cannot read {source}: {e}") from e


@dataclass(frozen=True)
class WrittenCase:
    case_id: str
    image: Path
    label: Path
    voxels_per_label: Dict[int, int]


class DatasetWriter:
    """Build a dataset folder case by case; `finish()` makes it appear at `root` in one rename."""

    def __init__(self, root: Path, labels: Sequence[DatasetLabel], channel_name: str, title: str = "",
                 overwrite: bool = False) -> None:
        self.root = Path(root)
        self.overwrite = overwrite
        if self.root.exists() and not overwrite:
            raise DatasetExportError(f"dataset folder {self.root} already exists; choose another or allow overwriting")
        self.labels = list(labels)
        self.channel_name = channel_name
        self.title = title
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.work = temporary_sibling(self.root, "partial")
        self.work.mkdir(mode=default_mode(0o777))  # not mkdtemp: its 0700 would survive the rename
        (self.work / "imagesTr").mkdir()
        (self.work / "labelsTr").mkdir()
        self.cases: List[WrittenCase] = []

    def image_path(self, case_id: str) -> Path:
        """Where the case's image goes while the dataset is being built."""
        return self.work / "imagesTr" / f"{case_id}_0000{FILE_ENDING}"

    def label_path(self, case_id: str) -> Path:
        return self.work / "labelsTr" / f"{case_id}{FILE_ENDING}"

    def add_case(self, case_id: str, image: ImageSource, label: ImageSource, local_names: Sequence[str],
                 value_by_segment: Dict[str, int]) -> WrittenCase:
        """Write one case. `image`/`label`: files or SimpleITK images (Slicer passes images pulled
        from its nodes); the label's value i+1 is the segment `local_names[i]`."""
        import SimpleITK as sitk

        if case_id in (c.case_id for c in self.cases):
            raise DatasetExportError(f"case {case_id!r} was already added")
        image, label = _as_image(image, case_id), _as_image(label, case_id)
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise DatasetExportError(f"case {case_id}: the image has {image.GetNumberOfComponentsPerPixel()} "
                                     "components per voxel; use a single-channel (scalar) volume")
        if not _same_grid(image, label):
            raise DatasetExportError(f"case {case_id}: the labelmap is not on the image's grid "
                                     f"(size {label.GetSize()} vs {image.GetSize()}); export it with the volume as reference")
        values = remap_labels(sitk.GetArrayViewFromImage(label), local_names, value_by_segment)
        out_label = sitk.GetImageFromArray(values)
        out_label.CopyInformation(image)
        target_image = self.image_path(case_id)
        sitk.WriteImage(image, str(target_image), True)
        sitk.WriteImage(out_label, str(self.label_path(case_id)), True)
        counts = np.bincount(values.ravel(), minlength=len(self.labels) + 1)
        written = WrittenCase(case_id, self.root / "imagesTr" / target_image.name,
                              self.root / "labelsTr" / self.label_path(case_id).name,
                              {v: int(counts[v]) for v in range(1, len(counts)) if v <= len(self.labels)})
        self.cases.append(written)
        return written

    def dataset_json(self) -> dict:
        return {
            "name": self.title or self.root.name,
            "channel_names": {"0": self.channel_name},
            "labels": dict([("background", 0)] + [(label.name, label.value) for label in self.labels]),
            "label_colors": {label.name: list(label.color) for label in self.labels},
            "numTraining": len(self.cases),
            "file_ending": FILE_ENDING,
        }

    def finish(self) -> Path:
        if not self.cases:
            raise DatasetExportError("no case was written; add at least one case")
        (self.work / "dataset.json").write_text(json.dumps(self.dataset_json(), indent=2))
        if self.root.exists() and not self.overwrite:
            # it appeared while the cases were written: not ours to replace
            raise DatasetExportError(f"dataset folder {self.root} appeared during the export; choose another folder")
        replace_folder(self.work, self.root)
        logger.info("wrote %d training cases to %s", len(self.cases), self.root)
        return self.root

    def abort(self) -> None:
        """Remove the partial folder (after an error or a cancel); the previous dataset stays untouched."""
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
