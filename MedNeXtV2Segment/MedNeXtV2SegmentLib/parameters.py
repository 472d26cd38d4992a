"""The one typed parameter object of the Segment module, and the one policy for saved settings.

`SegmentChoices` is filled from the panel, builds the engine command line (command.py) and is
saved in the scene's parameter node (and, in part, in QSettings: preferences.py) as JSON, so a
saved scene reopens with the same choices. It is not the engine's `mednextv2.inference.options.SegmentOptions`.

`from_saved` is how both modules read saved settings (this one and the Train wizard's
TrainSettings): unknown keys (a newer version) are dropped, missing keys (an older one) take
their defaults, and unreadable or invalid settings give the defaults - each with a warning in
the log, never an error: a saved scene or a settings file must never stop a module from opening.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable, Optional, Tuple, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")


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
    uncertainty: bool = False  # also write, load and show the engine's uncertainty map

    def validated(self) -> "SegmentChoices":
        if not self.model.strip():
            raise ParameterError("No model selected: pick a model from the list, or import one.")
        # The engine's own checks (torch-free), so the panel refuses exactly what the engine would.
        # Imported here, not at the top: command.py imports this file before use_shipped_engine().
        from mednextv2.errors import InputError
        from mednextv2.inference.options import DEVICES, SegmentOptions

        if not isinstance(self.uncertainty, bool):
            raise ParameterError(f"uncertainty must be true or false, got {self.uncertainty!r}")
        if self.device not in DEVICES:  # the panel's choices: the engine also takes cuda:N
            raise ParameterError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        try:
            SegmentOptions(device=self.device, tta=self.tta, step=self.step, fast=self.fast,
                           structures=self.structures or None)
        except InputError as e:
            raise ParameterError(str(e)) from None
        return self

    def validated_fields(self) -> "SegmentChoices":
        """Like `validated`, but an empty model is allowed (nothing chosen yet)."""
        replace(self, model=self.model or "unset").validated()
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
        """Choices saved by `to_json`, read with `from_saved`'s policy."""
        return from_saved(cls, text, "Segment choices", _segment_choices)


def _segment_choices(known: dict) -> SegmentChoices:
    if "structures" in known:
        known["structures"] = tuple(known["structures"] or ())
    return SegmentChoices(**known).validated_fields()


def from_saved(cls: Callable[..., T], text: str, what: str, build: Optional[Callable[[dict], T]] = None) -> T:
    """Saved settings (JSON text) as `cls`; see the module docstring for the policy."""
    if not text:
        return cls()
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            logger.warning("saved %s: ignoring unknown setting(s) %s (from another version)", what, ", ".join(unknown))
        known = {k: v for k, v in data.items() if k in names}
        return build(known) if build else cls(**known)
    except (ValueError, TypeError) as e:
        logger.warning("saved %s are unusable (%s); using the defaults", what, e)
        return cls()
