"""The one typed parameter object of the Segment module.

It is filled from the panel, builds the engine command line (command.py) and is saved in the
scene's parameter node as JSON, so a saved scene reopens with the same choices.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Optional, Tuple

DEVICES = ("auto", "cuda", "mps", "cpu")


class ParameterError(ValueError):
    """An option that the engine would reject; the message names the option."""


@dataclass(frozen=True)
class SegmentChoices:
    model: str = ""  # catalog id, or a path to a bundle folder / zip
    device: str = "auto"
    tta: bool = True  # mirroring test-time augmentation: better, 8x slower on CPU
    fast: bool = False
    step: Optional[float] = None  # sliding-window step as a fraction of the patch; None: the bundle's
    structures: Tuple[str, ...] = field(default_factory=tuple)  # empty: every label of the model

    def validated(self) -> "SegmentChoices":
        if not self.model.strip():
            raise ParameterError("No model selected: pick a model from the list, or import one.")
        if self.device not in DEVICES:
            raise ParameterError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.step is not None and not (0.0 < float(self.step) <= 1.0):
            raise ParameterError(f"step must be in (0, 1], got {self.step}")
        for name in self.structures:
            if not name.strip() or name.startswith("-"):
                raise ParameterError(f"structure names must be non-empty and not start with '-', got {name!r}")
        return self

    def with_changes(self, **changes) -> "SegmentChoices":
        if "structures" in changes:
            changes["structures"] = tuple(changes["structures"] or ())
        return replace(self, **changes)

    def to_json(self) -> str:
        data = asdict(self)
        data["structures"] = list(self.structures)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SegmentChoices":
        """Options saved by `to_json`; unknown keys (from a newer version) are ignored."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ParameterError(f"saved Segment options are not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise ParameterError("saved Segment options must be a JSON object")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "structures" in known:
            known["structures"] = tuple(known["structures"] or ())
        return cls(**known)
