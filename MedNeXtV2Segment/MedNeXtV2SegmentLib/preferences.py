"""Choices remembered across Slicer restarts (QSettings), beside the scene's parameter node.

The scene keeps the choices of one study; these keep the user's habits - device, TTA and the
last model, whether to show uncertainty - for the next session. Saved as the same JSON as in the scene, and read back with the
same policy for unknown or old keys (parameters.from_saved), so both places and both modules
behave alike. `settings` is anything with QSettings' value()/setValue(): qt.QSettings() in
Slicer, PySide6's QSettings in the tests.
"""
from __future__ import annotations

from .parameters import SegmentChoices
from .timing import RATE_KEY

KEY = "MedNeXtV2/Segment/choices"
REMEMBERED = ("model", "device", "tta", "fast", "uncertainty")  # not the structure subset: that belongs to one study


class Preferences:
    def __init__(self, settings) -> None:
        self.settings = settings

    def load(self) -> SegmentChoices:
        value = self.settings.value(KEY, "")
        return SegmentChoices.from_json(value if isinstance(value, str) else "")

    def save(self, choices: SegmentChoices) -> None:
        remembered = SegmentChoices().with_changes(**{k: getattr(choices, k) for k in REMEMBERED})
        self.settings.setValue(KEY, remembered.to_json())

    def cpuRate(self, modelId: str):
        """Seconds per network pass measured on this computer for `modelId` (timing.py), or None."""
        try:
            value = float(self.settings.value(RATE_KEY + modelId, ""))
        except (TypeError, ValueError):
            return None
        return value if value > 0 else None

    def setCpuRate(self, modelId: str, seconds: float) -> None:
        self.settings.setValue(RATE_KEY + modelId, f"{seconds:.6g}")
