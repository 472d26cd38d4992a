"""Import paths for the Segment module's pytest files: the module folder (MedNeXtV2SegmentLib)
and core/ (mednextv2), as Slicer would have them on sys.path."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEGMENT_DIR = REPO / "MedNeXtV2Segment"
CORE_DIR = REPO / "core"
for path in (SEGMENT_DIR, CORE_DIR):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
