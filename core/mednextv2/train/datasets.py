"""Find the labeled cases of a training dataset: an nnU-Net raw folder, a folder of image/label
pairs matched by name, or a JSON/CSV list of pairs.

Discovery only resolves paths and label names; `validation.validate_dataset` then checks every
case before any training starts.
"""
from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from mednextv2.errors import InputError

log = logging.getLogger(__name__)

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# "<case><sep><token>.<ending>" marks a label file; the image is "<case>[<sep><image token>].<ending>"
LABEL_TOKENS = ("label", "labels", "seg", "segmentation", "mask", "labelmap")
IMAGE_TOKENS = ("image", "img", "volume", "scan")
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Case:
    name: str
    images: Tuple[Path, ...]  # one file per channel, in channel order
    label: Path


@dataclass(frozen=True)
class Dataset:
    source: Path
    cases: Tuple[Case, ...]
    labels: Dict[int, str]  # value -> name, background (0) excluded; empty when the source names none
    channels: Tuple[str, ...]  # modality per channel ("CT", "MR", ...), "" when unknown


def split_ending(path: Path) -> Tuple[str, str]:
    """('case_0000', '.nii.gz') for 'case_0000.nii.gz'; ('', '') when not an image file."""
    name = path.name
    lower = name.lower()
    if lower.endswith(".seg.nrrd"):
        return name[: -len(".seg.nrrd")] + ".seg", ".nrrd"
    for ending in IMAGE_ENDINGS:
        if lower.endswith(ending):
            return name[: -len(ending)], ending
    return "", ""


def discover_dataset(source) -> Dataset:
    """The cases in `source` (folder or .json/.csv list); InputError when none can be found."""
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"dataset {path} does not exist")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            return _from_json_list(path)
        if suffix == ".csv":
            return _from_csv_list(path)
        raise InputError(f"dataset list {path} must be a .json or .csv file")
    if (path / "imagesTr").is_dir():
        return _from_nnunet(path)
    return _from_pair_folder(path)


# --- nnU-Net raw folder --------------------------------------------------------------------

def _from_nnunet(root: Path) -> Dataset:
    meta = _read_json(root / "dataset.json") if (root / "dataset.json").exists() else {}
    labels_dir = root / "labelsTr"
    if not labels_dir.is_dir():
        raise InputError(f"nnU-Net dataset {root} has imagesTr/ but no labelsTr/ folder")
    channel_names = meta.get("channel_names") or meta.get("modality") or {}
    channels = tuple(str(channel_names[k]) for k in sorted(channel_names, key=int)) if channel_names else ()
    groups: Dict[str, Dict[int, Path]] = {}
    for file in sorted((root / "imagesTr").iterdir()):
        stem, ending = split_ending(file)
        match = _CHANNEL_RE.match(stem) if ending else None
        if not match:
            log.warning("ignoring %s: nnU-Net images are named <case>_<4-digit channel>%s", file, ending or ".nii.gz")
            continue
        groups.setdefault(match["case"], {})[int(match["channel"])] = file
    cases = []
    for name, by_channel in sorted(groups.items()):
        label = _find_with_stem(labels_dir, name)
        images = tuple(by_channel[c] for c in sorted(by_channel))
        cases.append(Case(name, images, label if label else labels_dir / f"{name}{_ending_of(images[0])}"))
    return _finish(root, cases, _labels_from_nnunet(meta.get("labels", {}), root / "dataset.json"), channels)


def _labels_from_nnunet(labels: dict, where: Path) -> Dict[int, str]:
    # nnU-Net v2: {"background": 0, "liver": 1}; nnU-Net v1 / MSD: {"0": "background", "1": "liver"}
    out: Dict[int, str] = {}
    for key, value in labels.items():
        if isinstance(value, int) and not isinstance(value, bool):
            out[value] = str(key)
        elif isinstance(value, list):
            raise InputError(f"{where}: region-based labels ({key}: {value}) are not supported; use one value per label")
        else:
            try:
                out[int(key)] = str(value)
            except ValueError as e:
                raise InputError(f"{where}: label entry {key!r}: {value!r} is neither name->value nor value->name") from e
    out.pop(0, None)
    return out


def _ending_of(path: Path) -> str:
    return split_ending(path)[1] or ".nii.gz"


def _find_with_stem(folder: Path, stem: str) -> Optional[Path]:
    for file in sorted(folder.iterdir()):
        if split_ending(file)[0] == stem:
            return file
    return None


# --- folder of pairs -----------------------------------------------------------------------

def _classify(stem: str) -> Tuple[str, str]:
    """(case name, 'label' | 'image') from a file stem by its last token."""
    if stem.endswith(".seg"):
        return stem[: -len(".seg")], "label"
    match = re.match(r"^(?P<case>.+?)[_\-.](?P<token>[A-Za-z]+)$", stem)
    if match and match["token"].lower() in LABEL_TOKENS:
        return match["case"], "label"
    if match and match["token"].lower() in IMAGE_TOKENS:
        return match["case"], "image"
    return stem, "image"


def _from_pair_folder(root: Path) -> Dataset:
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return _from_twin_folders(root / "images", root / "labels", root)
    images: Dict[str, Dict[int, Path]] = {}
    labels: Dict[str, Path] = {}
    for file in sorted(root.iterdir()):
        stem, ending = split_ending(file)
        if not ending:
            continue
        name, kind = _classify(stem)
        if kind == "label":
            labels[name] = file
            continue
        channel = _CHANNEL_RE.match(name)
        if channel:
            images.setdefault(channel["case"], {})[int(channel["channel"])] = file
        else:
            images.setdefault(name, {})[0] = file
    if not labels:
        raise InputError(
            f"no label files in {root}: name them <case>_label.nii.gz (or _seg, _mask, .seg.nrrd) beside "
            f"<case>_image.nii.gz, use images/ and labels/ subfolders, an nnU-Net folder, or a .json/.csv list")
    cases, problems = [], []
    for name in sorted(set(images) | set(labels)):
        if name not in labels:
            problems.append(f"case {name}: image {images[name][min(images[name])].name} has no label file")
        elif name not in images:
            problems.append(f"case {name}: label {labels[name].name} has no image file")
        else:
            cases.append(Case(name, tuple(images[name][c] for c in sorted(images[name])), labels[name]))
    if problems:
        raise InputError(f"dataset {root}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return _finish(root, cases, _labels_beside(root), ())


def _labels_beside(root: Path) -> Dict[int, str]:
    """Label names from a dataset.json in a folder of pairs ({"labels": {"liver": 1}}, nnU-Net's form)."""
    path = root / "dataset.json"
    if not path.is_file():
        return {}
    meta = _read_json(path)
    labels = meta.get("labels") if isinstance(meta, dict) else None
    return _labels_from_nnunet(labels, path) if isinstance(labels, dict) else {}


def _from_twin_folders(image_dir: Path, label_dir: Path, root: Path) -> Dataset:
    cases, problems = [], []
    for file in sorted(image_dir.iterdir()):
        stem, ending = split_ending(file)
        if not ending:
            continue
        label = _find_with_stem(label_dir, stem)
        if label is None:
            problems.append(f"case {stem}: no label named {stem}.* in {label_dir}")
        else:
            cases.append(Case(stem, (file,), label))
    if problems:
        raise InputError(f"dataset {root}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return _finish(root, cases, _labels_beside(root), ())


# --- JSON / CSV lists ----------------------------------------------------------------------

def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from e
    except RecursionError as e:
        raise InputError(f"cannot read {path}: JSON nested too deeply") from e


def _from_json_list(path: Path) -> Dataset:
    """[{"image": ..., "label": ...}] or {"labels": {value: name}, "channels": [...], "cases": [...]}."""
    data = _read_json(path)
    meta = data if isinstance(data, dict) else {}
    entries = meta.get("cases", meta.get("training")) if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise InputError(f"{path}: expected a list of cases, or an object with a 'cases' list")
    cases = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise InputError(f"{path}: case #{i + 1} must be an object with 'image' and 'label' (got {entry!r})")
        images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        name = str(entry.get("name") or split_ending(Path(images[0]))[0] or f"case{i + 1}")
        cases.append(Case(name, tuple(_resolve(path, p) for p in images), _resolve(path, entry["label"])))
    labels = _labels_from_nnunet(meta.get("labels", {}), path) if meta.get("labels") else {}
    return _finish(path, cases, labels, tuple(str(c) for c in meta.get("channels", ())))


def _from_csv_list(path: Path) -> Dataset:
    """Columns: `image` (or image_0000, image_0001, ...), `label`, optional `name`."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read {path}: {e}") from e
    if not rows:
        raise InputError(f"{path}: no rows; expected a header 'image,label' and one row per case")
    columns = list(rows[0])
    image_cols = sorted(c for c in columns if c == "image" or c.startswith("image_"))
    if not image_cols or "label" not in columns:
        raise InputError(f"{path}: header must have 'image' (or image_0000, image_0001, ...) and 'label', got {columns}")
    cases = []
    for i, row in enumerate(rows):
        images = tuple(_resolve(path, row[c]) for c in image_cols if row.get(c))
        name = row.get("name") or (split_ending(images[0])[0] if images else f"row{i + 2}")
        cases.append(Case(str(name), images, _resolve(path, row["label"] or "")))
    return _finish(path, cases, {}, ())


def _resolve(list_file: Path, value) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (list_file.parent / p)


def _finish(source: Path, cases: Sequence[Case], labels: Dict[int, str], channels: Tuple[str, ...]) -> Dataset:
    if not cases:
        raise InputError(f"no labeled cases found in {source}")
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"{source}: case names must be unique; repeated: {', '.join(duplicates)}")
    return Dataset(source=source, cases=tuple(cases), labels=dict(sorted(labels.items())), channels=channels)
