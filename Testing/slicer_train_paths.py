"""Import paths for the Train module's pytest files: MedNeXtV2Train (MedNeXtV2TrainLib) on top of
what the Segment module's tests use (MedNeXtV2SegmentLib, core/), as Slicer has them on sys.path."""
import sys

from slicer_segment_paths import CORE_DIR, REPO, SEGMENT_DIR  # noqa: F401  (adds the Segment and core paths)

TRAIN_DIR = REPO / "MedNeXtV2Train"
if str(TRAIN_DIR) not in sys.path:
    sys.path.insert(0, str(TRAIN_DIR))
