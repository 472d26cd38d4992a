"""Labels of the dataset: the union of segment names over the cases, mapped to the base model's labels.

Each segment name gets a choice: a base-model label (the engine reuses that label's head row
because the names match), a new label of its own, or left out (counted as background). Label
values are then fixed once for the whole dataset, so a value means the same in every case.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

Color = Tuple[int, int, int]
NEW = "new"
BASE = "base"
IGNORE = "ignore"
_DEFAULT_COLOR: Color = (128, 174, 128)


@dataclass(frozen=True)
class SegmentLabel:
    """A segment name found in the cases, with its first-seen color and how many cases have it."""

    name: str
    color: Color
    case_count: int


@dataclass(frozen=True)
class BaseLabel:
    value: int
    name: str
    color: Color = _DEFAULT_COLOR


@dataclass(frozen=True)
class LabelChoice:
    """What to do with one segment name: kind is BASE (target = base label name), NEW (target = new name) or IGNORE."""

    segment: str
    kind: str
    target: str = ""


@dataclass(frozen=True)
class DatasetLabel:
    value: int
    name: str
    color: Color
    segments: Tuple[str, ...]  # segment names that export to this value
    from_base: bool


def normalized(name: str) -> str:
    """Names equal up to case, spaces, dashes and underscores ("Left_Kidney" == "left kidney")."""
    return re.sub(r"[^a-z0-9]+", "", name.lower())


def union_of_segments(cases: Sequence[Sequence[Tuple[str, Color]]]) -> List[SegmentLabel]:
    """Union of segment names, in first-seen order; `cases` holds (name, color) per segment per case."""
    order: List[str] = []
    colors: Dict[str, Color] = {}
    counts: Dict[str, int] = {}
    for segments in cases:
        for name in dict.fromkeys(n for n, _ in segments):
            counts[name] = counts.get(name, 0) + 1
        for name, color in segments:
            if name not in colors:
                order.append(name)
                colors[name] = tuple(int(c) for c in color)
    return [SegmentLabel(n, colors[n], counts[n]) for n in order]


def default_choices(segments: Sequence[SegmentLabel], base_labels: Sequence[BaseLabel]) -> List[LabelChoice]:
    """Map each segment to the base label of the same (normalized) name, else keep it as a new label."""
    base_by_key = {normalized(b.name): b for b in base_labels}
    choices = []
    for seg in segments:
        base = base_by_key.get(normalized(seg.name))
        choices.append(LabelChoice(seg.name, BASE, base.name) if base else LabelChoice(seg.name, NEW, seg.name))
    return choices


def dataset_labels(segments: Sequence[SegmentLabel], choices: Sequence[LabelChoice],
                   base_labels: Sequence[BaseLabel]) -> List[DatasetLabel]:
    """Values 1..n: base-model labels first in the base model's order, then new labels in segment order.

    Raises ValueError naming every bad choice (unknown segment or base label, a new name that
    clashes with a base label, nothing left to train).
    """
    seg_by_name = {s.name: s for s in segments}
    base_by_name = {b.name: b for b in base_labels}
    base_keys = {normalized(b.name) for b in base_labels}
    errors = []
    base_sources: Dict[str, List[str]] = {}
    new_sources: Dict[str, List[str]] = {}
    new_colors: Dict[str, Color] = {}
    for choice in choices:
        seg = seg_by_name.get(choice.segment)
        if seg is None:
            errors.append(f"segment {choice.segment!r} is in no case")
            continue
        if choice.kind == BASE:
            if choice.target not in base_by_name:
                errors.append(f"segment {choice.segment!r} is mapped to {choice.target!r}, which the base model does not have")
                continue
            base_sources.setdefault(choice.target, []).append(seg.name)
        elif choice.kind == NEW:
            name = choice.target.strip()
            if not name or normalized(name) == "background":
                errors.append(f"segment {choice.segment!r} needs a label name other than background")
                continue
            if normalized(name) in base_keys:
                errors.append(f"new label {name!r} has the name of a base-model label; map {choice.segment!r} to it instead")
                continue
            new_sources.setdefault(name, []).append(seg.name)
            new_colors.setdefault(name, seg.color)
        elif choice.kind != IGNORE:
            errors.append(f"segment {choice.segment!r}: unknown choice {choice.kind!r}")
    if errors:
        raise ValueError("; ".join(errors))
    labels: List[DatasetLabel] = []
    for base in sorted(base_labels, key=lambda b: b.value):
        if base.name in base_sources:
            labels.append(DatasetLabel(len(labels) + 1, base.name, base.color, tuple(base_sources[base.name]), True))
    for name, sources in new_sources.items():
        labels.append(DatasetLabel(len(labels) + 1, name, new_colors[name], tuple(sources), False))
    if not labels:
        raise ValueError("every segment is left out; keep at least one label to train")
    return labels


def value_by_segment(labels: Sequence[DatasetLabel]) -> Dict[str, int]:
    """Segment name -> dataset label value; names not in it are exported as background."""
    return {seg: label.value for label in labels for seg in label.segments}
