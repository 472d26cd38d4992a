"""The label table of a model bundle: names, colours and DICOM terminology per label value.

The bundle is read and validated by the engine's own `mednextv2.bundle.load_bundle` (weights are
not read, torch is not imported), and terminology is serialized by `mednextv2.inference.export`, the same
code that writes it into the .seg.nrrd, so the panel and the result file can never disagree.
Used to name and colour the loaded segments. A structure subset is checked by the engine's own
`mednextv2.inference.postprocessing.select_structures` (case-insensitive), so panel and engine agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple


class LabelTableError(ValueError):
    """The bundle has no usable label list, or a structure name is unknown."""


@dataclass(frozen=True)
class LabelEntry:
    value: int
    name: str
    color: Tuple[int, int, int]  # 0..255
    terminology: str = ""  # Slicer's serialized terminology entry, '' when the bundle has none

    @property
    def color_float(self) -> Tuple[float, float, float]:
        return tuple(c / 255.0 for c in self.color)


def label_table(labels) -> Tuple[LabelEntry, ...]:
    """Entries, sorted by value, from `mednextv2.bundle.Label`s."""
    from mednextv2.inference.export import terminology_string

    return tuple(LabelEntry(int(l.value), l.name, tuple(int(c) for c in l.color), terminology_string(l) or "")
                 for l in sorted(labels, key=lambda l: l.value))


def load_bundle(bundle: Path):
    """The validated bundle (folder or zip); LabelTableError names the file and the problem."""
    from mednextv2.bundle import load_bundle as _load
    from mednextv2.errors import InputError

    try:
        return _load(bundle)
    except InputError as e:
        raise LabelTableError(str(e)) from e


def bundle_label_table(bundle: Path) -> Tuple[LabelEntry, ...]:
    return label_table(load_bundle(bundle).labels)


def selected_label_table(labels, names) -> Tuple[LabelEntry, ...]:
    """label_table of the structures `names` (every label when empty), chosen by the engine's rule."""
    from mednextv2.errors import InputError
    from mednextv2.inference.postprocessing import select_structures

    try:
        return label_table(select_structures(labels, names) if names else labels)
    except InputError as e:
        raise LabelTableError(str(e)) from e
