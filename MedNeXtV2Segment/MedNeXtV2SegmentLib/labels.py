"""The label table of a model bundle: names, colours and DICOM terminology per label value.

The bundle is read and validated by the engine's own `mednextv2.bundle.load_bundle` (weights are
not read, torch is not imported), and terminology is serialized by `mednextv2.export`, the same
code that writes it into the .seg.nrrd, so the panel and the result file can never disagree.
Used to name and colour the loaded segments, to build a colour table node, and to check a
structure subset before launching.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Tuple


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
    from mednextv2.export import terminology_string

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


def select_structures(entries: Sequence[LabelEntry], names: Sequence[str]) -> Tuple[LabelEntry, ...]:
    """The entries for a structure subset; unknown names raise, listing the known ones."""
    if not names:
        return tuple(entries)
    by_name = {e.name: e for e in entries}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise LabelTableError(f"unknown structure(s) {', '.join(unknown)}; this model has: "
                              f"{', '.join(e.name for e in entries)}")
    return tuple(by_name[n] for n in dict.fromkeys(names))


def color_table_text(entries: Sequence[LabelEntry], title: str = "") -> str:
    """Slicer .ctbl text ('value name r g b a'; spaces in names become '_', as Slicer writes them)."""
    lines = [f"# Color table for {title or 'a MedNeXtV2 model'}", f"# {len(entries) + 1} values",
             "0 Background 0 0 0 0"]
    for e in entries:
        lines.append(f"{e.value} {e.name.replace(' ', '_')} {e.color[0]} {e.color[1]} {e.color[2]} 255")
    return "\n".join(lines) + "\n"
