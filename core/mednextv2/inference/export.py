"""Write the result: a Slicer `.seg.nrrd`, or a plain labelmap with a JSON label table beside it.

Every file is written to a hidden temporary name in the destination folder and renamed at the
end, so a failed or cancelled run leaves no file that looks valid (and no temporary either).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from mednextv2.atomic import atomic_path
from mednextv2.bundle import Label
from mednextv2.errors import InputError, ResourceError
from mednextv2.schema import control_characters

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
SEG_SUFFIX = ".seg.nrrd"
LABELMAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
# Slicer's default context for segment terminology; used when a label names no context.
DEFAULT_TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
DEFAULT_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
# Segment tag carrying the segment's mean confidence (docs/uncertainty.md); Slicer 5.6+ reads every
# key:value of a segment's Tags field into the segment's tags (vtkSegment::GetTag).
CONFIDENCE_TAG = "MedNeXtV2.MeanConfidence"
# Header field of the uncertainty maps the engine writes (NRRD "key:=value", MHA "key = value").
UNCERTAINTY_MARKER = ("MedNeXtV2_content", "uncertainty map")
Confidence = Optional[Dict[int, Optional[float]]]  # label value -> mean confidence; None: not computed


def output_kind(path: PathLike) -> str:
    """"seg" for .seg.nrrd, "labelmap" for .nii.gz/.nii/.nrrd/.mha; InputError otherwise."""
    name = Path(path).name.lower()
    if name.endswith(SEG_SUFFIX):
        return "seg"
    if any(name.endswith(s) for s in LABELMAP_SUFFIXES):
        return "labelmap"
    raise InputError(f"output {path}: unknown file type; use .seg.nrrd, or .nii.gz/.nii/.nrrd/.mha for a labelmap")


def known_suffix(path: Path) -> str:
    """The output extension of `path` (".seg.nrrd", ".nii.gz", ...), else its last suffix."""
    name = path.name.lower()
    for s in (SEG_SUFFIX,) + LABELMAP_SUFFIXES:
        if name.endswith(s):
            return path.name[-len(s):]
    return path.suffix


def terminology_string(label: Label) -> Optional[str]:
    """Slicer's TerminologyEntry tag value: context~category~type~modifier~anatomic context~region~modifier."""
    t = label.terminology
    if not t:
        return None

    def code(key: str) -> str:
        return "^".join(t.get(key) or ("", "", ""))

    return "~".join([t.get("context", DEFAULT_TERMINOLOGY_CONTEXT), code("category"), code("type"),
                     code("type_modifier"), t.get("anatomic_context", DEFAULT_ANATOMIC_CONTEXT if t.get("anatomic_region") else ""),
                     code("anatomic_region"), code("anatomic_region_modifier")])


def _extent(mask_axes: np.ndarray) -> str:
    """Segment extent 'i0 i1 j0 j1 k0 k1' of a (x, y, z)-ordered mask; empty segments get an empty extent."""
    parts = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask_axes.any(axis=other))
        parts += [int(hits[0]), int(hits[-1])] if hits.size else [0, -1]
    return " ".join(str(v) for v in parts)


def nrrd_value(text: str) -> str:
    """`text` as one NRRD header value, so it can never end its line and start a forged field:
    backslash and line feed escaped as the format defines (teem, Slicer's reader, unescapes them),
    any other control character a space, as teem's own writer does."""
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return "".join(" " if control_characters(c) else c for c in text)


def seg_nrrd_header(labelmap: sitk.Image, labels: Sequence[Label], voxels_xyz: np.ndarray,
                    confidence: Confidence = None) -> dict:
    spacing = np.array(labelmap.GetSpacing())
    direction = np.array(labelmap.GetDirection()).reshape(3, 3)
    header = {
        "type": "uint8" if voxels_xyz.dtype == np.uint8 else "uint16",
        "dimension": 3,
        "space": "left-posterior-superior",  # ITK/SimpleITK physical space is LPS, as Slicer's files
        "space directions": (direction * spacing[None, :]).T,  # row i = world step of index axis i
        "space origin": np.array(labelmap.GetOrigin(), dtype=float),
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    for i, label in enumerate(labels):
        color = " ".join(f"{c / 255.0:.6g}" for c in label.color)
        tags = ["Segmentation.Status:completed"]
        term = terminology_string(label)
        if term:
            tags.append(f"TerminologyEntry:{term}")
        if confidence and confidence.get(label.value) is not None:
            tags.append(f"{CONFIDENCE_TAG}:{confidence[label.value]:.4f}")
        fields = {
            "ID": f"Segment_{label.value}", "Name": nrrd_value(label.name), "NameAutoGenerated": "0",
            "Color": color, "ColorAutoGenerated": "0", "LabelValue": str(label.value), "Layer": "0",
            "Extent": _extent(voxels_xyz == label.value), "Tags": nrrd_value("|".join(tags) + "|"),
        }
        header.update({f"Segment{i}_{k}": v for k, v in fields.items()})
    return header


def write_seg_nrrd(labelmap: sitk.Image, labels: Sequence[Label], path: PathLike, confidence: Confidence = None) -> Path:
    """A segmentation Slicer loads with names, colors and terminology, on the labelmap's grid."""
    import nrrd

    path = Path(path)
    voxels_xyz = sitk.GetArrayViewFromImage(labelmap).transpose(2, 1, 0)  # NRRD's fastest axis first
    header = seg_nrrd_header(labelmap, labels, voxels_xyz, confidence)
    with atomic_path(path) as tmp:
        nrrd.write(str(tmp), np.asarray(voxels_xyz, dtype=np.uint8 if header["type"] == "uint8" else np.uint16),
                   header, index_order="F", compression_level=6)
    log.debug("wrote %s (%d segments)", path, len(labels))
    return path


def label_table_path(labelmap_path: PathLike) -> Path:
    """`case.nii.gz` -> `case.labels.json`."""
    path = Path(labelmap_path)
    return path.with_name(path.name[: -len(known_suffix(path))] + ".labels.json")


def label_table(labels: Sequence[Label], confidence: Confidence = None) -> dict:
    """The label table; with `confidence`, each segment's `mean_confidence` (null when empty)."""
    return {"labels": [{"value": 0, "name": "background", "color": [0, 0, 0]}] + [
        dict({"value": lab.value, "name": lab.name, "color": list(lab.color)},
             **({"terminology": dict(lab.terminology)} if lab.terminology else {}),
             **({"mean_confidence": confidence.get(lab.value)} if confidence is not None else {}))
        for lab in labels]}


def write_labelmap(labelmap: sitk.Image, labels: Sequence[Label], path: PathLike, confidence: Confidence = None) -> Path:
    """A labelmap file plus `<name>.labels.json`; the image is renamed last, so it implies both."""
    path = Path(path)
    table = label_table_path(path)
    with atomic_path(path) as tmp_image:
        try:
            sitk.WriteImage(labelmap, str(tmp_image), useCompression=True)
        except RuntimeError as e:
            raise ResourceError(f"cannot write {path}: {e}") from e
        with atomic_path(table) as tmp_table:
            tmp_table.write_text(json.dumps(label_table(labels, confidence), indent=2) + "\n", encoding="utf-8")
    log.debug("wrote %s and %s", path, table.name)
    return path


def result_files(path: PathLike) -> List[Path]:
    """Every file `write_result` writes for `path`: the file, and a labelmap's label table."""
    path = Path(path)
    return [path] if output_kind(path) == "seg" else [path, label_table_path(path)]


def write_result(labelmap: sitk.Image, labels: Sequence[Label], path: PathLike, confidence: Confidence = None) -> Path:
    """Write by the output's extension: .seg.nrrd, or a labelmap with its label table."""
    if output_kind(path) == "seg":
        return write_seg_nrrd(labelmap, labels, path, confidence)
    return write_labelmap(labelmap, labels, path, confidence)


def write_uncertainty_map(image: sitk.Image, path: PathLike) -> Path:
    """The uncertainty map by its extension, written atomically; NRRD and MHA headers carry
    `UNCERTAINTY_MARKER`, so a batch run over a folder holding maps it wrote knows them."""
    path = Path(path)
    image = sitk.Image(image)  # the caller's image keeps its metadata
    image.SetMetaData(*UNCERTAINTY_MARKER)
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=True)
        except RuntimeError as e:
            raise ResourceError(f"cannot write {path}: {e}") from e
    return path


def is_uncertainty_map(path: PathLike) -> bool:
    """True for an image whose header carries `UNCERTAINTY_MARKER` (only the engine writes it)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    key, value = UNCERTAINTY_MARKER
    return reader.HasMetaDataKey(key) and reader.GetMetaData(key).strip() == value
