"""Pair volumes with segmentations from plain records of the scene (no Slicer import).

Evidence, strongest first: the segmentation names the volume as its reference geometry
(Segment Editor sets this when a user segments a volume); then the same study and matching
names; then the only volume and the only segmentation of a study; then matching names anywhere.
Each volume and each segmentation is used at most once.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

# Words that name what a node is rather than which case it is ("CT 3 segmentation" is case "ct 3").
_ROLE_WORDS = ("segmentation", "segment", "seg", "labelmap", "labels", "label", "mask", "volume", "image", "img")


@dataclass(frozen=True)
class NodeRecord:
    """One scene node: `study` is the subject-hierarchy study (or parent) item, None when loose."""

    id: str
    name: str
    study: Optional[str] = None
    reference_volume_id: Optional[str] = None  # segmentations only


@dataclass(frozen=True)
class CasePair:
    volume_id: str
    segmentation_id: str
    reason: str


@dataclass(frozen=True)
class PairingResult:
    pairs: Tuple[CasePair, ...]
    unpaired_volumes: Tuple[str, ...]
    unpaired_segmentations: Tuple[str, ...]


def case_stem(name: str) -> str:
    """The part of a node name that identifies the case: lower case, role words and separators dropped."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    kept = [w for w in words if w not in _ROLE_WORDS]
    return " ".join(kept or words)


def _names_match(volume: NodeRecord, segmentation: NodeRecord) -> bool:
    return case_stem(volume.name) == case_stem(segmentation.name)


def pair_cases(volumes: Sequence[NodeRecord], segmentations: Sequence[NodeRecord]) -> PairingResult:
    """Pairs in segmentation order, and what is left over."""
    volume_by_id: Dict[str, NodeRecord] = {v.id: v for v in volumes}
    free_volumes = [v.id for v in volumes]
    found: Dict[str, CasePair] = {}

    def take(segmentation: NodeRecord, volume_id: str, reason: str) -> None:
        found[segmentation.id] = CasePair(volume_id, segmentation.id, reason)
        free_volumes.remove(volume_id)

    def free_segmentations() -> List[NodeRecord]:
        return [s for s in segmentations if s.id not in found]

    for seg in segmentations:
        if seg.reference_volume_id in free_volumes:
            take(seg, seg.reference_volume_id, "segmented on this volume")
    for seg in free_segmentations():
        for vid in free_volumes:
            volume = volume_by_id[vid]
            if seg.study is not None and volume.study == seg.study and _names_match(volume, seg):
                take(seg, vid, "same study, matching name")
                break
    for seg in free_segmentations():
        if seg.study is None:
            continue
        study_volumes = [vid for vid in free_volumes if volume_by_id[vid].study == seg.study]
        study_segs = [s for s in free_segmentations() if s.study == seg.study]
        if len(study_volumes) == 1 and len(study_segs) == 1:
            take(seg, study_volumes[0], "only volume and segmentation of the study")
    for seg in free_segmentations():
        matches = [vid for vid in free_volumes if _names_match(volume_by_id[vid], seg)]
        if len(matches) == 1:
            take(seg, matches[0], "matching name")

    pairs = tuple(found[s.id] for s in segmentations if s.id in found)
    return PairingResult(pairs, tuple(free_volumes), tuple(s.id for s in segmentations if s.id not in found))


@dataclass(frozen=True)
class CaseRow:
    """What a row of the wizard's case table holds (ids as chosen in its combo boxes)."""

    volume_id: Optional[str]
    segmentation_id: Optional[str]
    used: bool = True


def row_for_case(rows: Sequence[CaseRow], volume_id: str, segmentation_id: str) -> Tuple[Optional[int], List[int]]:
    """Where a given (volume, segmentation) case goes in the table: the row pairing exactly these two,
    else the first row of this volume (its segmentation is then replaced), else None (a new row);
    and the other rows of this volume, which must be left out: one volume with two segmentations
    would teach the network two answers for the same voxels."""
    same_volume = [i for i, row in enumerate(rows) if row.volume_id == volume_id]
    exact = [i for i in same_volume if rows[i].segmentation_id == segmentation_id]
    row = (exact or same_volume or [None])[0]
    return row, [i for i in same_volume if i != row]


def merge_pairs(rows: Sequence[CaseRow], pairs: Sequence[CasePair], exists) -> Tuple[List[int], List[CasePair]]:
    """(rows to remove, pairs to add) when the scene changed: the table is merged, never rebuilt.

    A row stays - manual, unticked or edited - unless a node it names has left the scene. A new
    pair is added only when neither of its nodes is already in a remaining row: the user's
    choices win over automatic pairing. `exists(node_id)` says whether a node is still there."""
    stale = [i for i, row in enumerate(rows)
             if any(node and not exists(node) for node in (row.volume_id, row.segmentation_id))]
    used = {node for i, row in enumerate(rows) if i not in stale for node in (row.volume_id, row.segmentation_id) if node}
    return stale, [p for p in pairs if p.volume_id not in used and p.segmentation_id not in used]
