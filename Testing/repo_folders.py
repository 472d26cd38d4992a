"""The repository's folders, for the tests and the scripts beside them.

Under pytest, pytest.ini's `pythonpath` puts core/ and the two module folders on sys.path, as
Slicer has them. A script run on its own (render_*.py) calls `import_like_slicer()` first."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE_DIR = REPO / "core"
SEGMENT_DIR = REPO / "MedNeXtV2Segment"
TRAIN_DIR = REPO / "MedNeXtV2Train"


def import_like_slicer() -> None:
    """core/ (mednextv2) first, so that this checkout's engine wins over an installed one, then
    MedNeXtV2SegmentLib and MedNeXtV2TrainLib: the order pytest.ini's `pythonpath` gives."""
    for folder in (TRAIN_DIR, SEGMENT_DIR, CORE_DIR):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
