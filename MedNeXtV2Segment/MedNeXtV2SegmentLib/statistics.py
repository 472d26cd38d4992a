"""The engine's per-segment statistics (`segment --statistics FILE.json`) as the panel shows them.

The file is the engine's contract: {"format": "mednextv2-statistics", "version": 1, "rows": [...]},
one row per case and segment; a segment with no voxels has nulls. The panel shows one case (the
run's), a fixed set of columns, and copies the same table as tab-separated text with a header row,
so it pastes into a spreadsheet as the user sees it. Slicer's Segment Statistics module computes more
(surface, shape, per-label-map measures) on the segmentation as corrected.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

FORMAT, VERSION = "mednextv2-statistics", 1
# (header, row field, decimals); None decimals: an integer count.
COLUMNS: Tuple[Tuple[str, str, Optional[int]], ...] = (
    ("Segment", "segment", None), ("Voxels", "voxels", None), ("Volume (mL)", "volume_ml", 2),
    ("Mean intensity", "intensity_mean", 1), ("Std intensity", "intensity_std", 1),
    ("Mean confidence", "mean_confidence", 3))


class StatisticsError(ValueError):
    """The statistics file is not the engine's, or is not readable; the message names the file."""


@dataclass(frozen=True)
class SegmentStatistics:
    case: str
    segment: str
    voxels: int
    volume_ml: Optional[float]
    intensity_mean: Optional[float]
    intensity_std: Optional[float]
    intensity_min: Optional[float]
    intensity_max: Optional[float]
    mean_confidence: Optional[float]

    def cells(self) -> List[str]:
        return [_format(getattr(self, name), decimals) for _, name, decimals in COLUMNS]


def _number(row: dict, name: str, path: Path) -> Optional[float]:
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StatisticsError(f"{path}: '{name}' of segment '{row.get('segment')}' is not a number: {value!r}")
    return float(value)


def read_statistics(path: Path) -> List[SegmentStatistics]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise StatisticsError(f"{path}: not readable as JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise StatisticsError(f"{path}: not a {FORMAT} file of version {VERSION}")
    rows = data.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise StatisticsError(f"{path}: 'rows' must be a list of objects")
    result = []
    for row in rows:
        voxels = _number(row, "voxels", path)
        result.append(SegmentStatistics(
            case=str(row.get("case", "")), segment=str(row.get("segment", "")), voxels=int(voxels or 0),
            **{name: _number(row, name, path) for name in ("volume_ml", "intensity_mean", "intensity_std",
                                                            "intensity_min", "intensity_max", "mean_confidence")}))
    return result


def _format(value, decimals: Optional[int]) -> str:
    if value is None:
        return ""  # a segment with no voxels: an empty cell, not a misleading 0
    if decimals is None:
        return str(value)
    return f"{value:.{decimals}f}"


def header() -> List[str]:
    return [title for title, _, _ in COLUMNS]


def table_text(rows: Sequence[SegmentStatistics]) -> str:
    """Tab-separated, header first, one line per row: what "Copy" puts on the clipboard.

    A segment name (it comes from the model's bundle) that starts like a spreadsheet formula gets a
    leading apostrophe, so the spreadsheet shows it as text and runs nothing: the engine's CSV
    does the same (mednextv2.inference.statistics)."""
    lines = [header()] + [[_as_text(row.segment)] + row.cells()[1:] for row in rows]
    return "\n".join("\t".join(_one_line(cell) for cell in line) for line in lines) + "\n"


def _as_text(name: str) -> str:
    return "'" + name if name[:1] in ("=", "+", "-", "@") else name


def _one_line(cell: str) -> str:
    return cell.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def fill_table(table, rows: Sequence[SegmentStatistics], itemClass) -> None:
    """Fill a QTableWidget (Slicer's PythonQt or PySide6: the same calls); `itemClass` is its QTableWidgetItem."""
    table.clearContents()
    table.setColumnCount(len(COLUMNS))
    table.setHorizontalHeaderLabels(header())
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, text in enumerate(row.cells()):
            table.setItem(r, c, itemClass(text))
    table.resizeColumnsToContents()
