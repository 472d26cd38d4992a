"""The one parameter object of the wizard: drives the GUI, the engine's command line and the saved state."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from typing import List, Optional, Tuple

from MedNeXtV2SegmentLib.parameters import DEVICES
from MedNeXtV2TrainLib.presets import DEFAULT_PRESET, check_patch_size, get_preset

ARCHITECTURES = ("v2-tiny", "v2-base", "v2-width2")  # `mednextv2 train --preset` when training from scratch
# A base given as a file: an AMAES pretrained MedNeXt encoder (the engine's mednextv2.store.amaes.SUFFIXES).
BASE_FILE_SUFFIXES = (".pth", ".pt", ".ckpt")


def is_base_file(base_model: Optional[str]) -> bool:
    """Whether the base is a pretrained-encoder file rather than a model id or bundle."""
    return bool(base_model) and base_model.lower().endswith(BASE_FILE_SUFFIXES)
MODALITIES = ("CT", "MR", "other")


def model_id_from_name(name: str) -> str:
    """A folder- and catalog-safe id: lower case letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.strip().lower()).strip("-")
    return slug or "my-model"


@dataclass(frozen=True)
class TrainSettings:
    model_name: str = "My model"
    base_model: Optional[str] = None        # catalog id, bundle path or encoder file (.pth); None: from scratch
    architecture: str = "v2-tiny"           # used only from scratch
    modality: str = "CT"                    # the dataset's channel name; CT turns on CT normalization
    preset: str = DEFAULT_PRESET
    minutes: Optional[int] = get_preset(DEFAULT_PRESET).minutes
    epochs: Optional[int] = get_preset(DEFAULT_PRESET).epochs
    iterations: Optional[int] = None        # per epoch; None: the engine's default for the device
    patch_size: Optional[Tuple[int, int, int]] = get_preset(DEFAULT_PRESET).patch_size
    device: str = "auto"
    val_fraction: Optional[float] = None   # None: the engine's rule (20% held out from 5 labeled cases up)
    seed: Optional[int] = None

    @property
    def model_id(self) -> str:
        return model_id_from_name(self.model_name)

    def with_preset(self, name: str) -> "TrainSettings":
        """Budget and patch from a preset; the user's other choices stay."""
        preset = get_preset(name)
        return replace(self, preset=preset.name, minutes=preset.minutes, epochs=preset.epochs,
                       patch_size=preset.patch_size)

    def problems(self) -> List[str]:
        """Everything wrong with these settings, in words a user can act on; empty when fine."""
        found = []
        if not self.model_name.strip():
            found.append("Give the new model a name.")
        if self.base_model is None and self.architecture not in ARCHITECTURES:
            found.append(f"Architecture {self.architecture!r} is not one of {', '.join(ARCHITECTURES)}.")
        if self.modality not in MODALITIES:
            found.append(f"Modality {self.modality!r} is not one of {', '.join(MODALITIES)}.")
        if (self.minutes is None) == (self.epochs is None):
            found.append("Set either a time budget in minutes or a number of epochs, not both.")
        if self.minutes is not None and self.minutes < 1:
            found.append(f"The time budget must be at least 1 minute, got {self.minutes}.")
        if self.epochs is not None and self.epochs < 1:
            found.append(f"The number of epochs must be at least 1, got {self.epochs}.")
        if self.iterations is not None and self.iterations < 1:
            found.append(f"The iterations per epoch must be at least 1, got {self.iterations}.")
        if self.patch_size is not None:
            try:
                check_patch_size(self.patch_size)
            except ValueError as e:
                found.append(f"Patch size: {e}.")
        if self.device not in DEVICES:
            found.append(f"Device {self.device!r} is not one of {', '.join(DEVICES)}.")
        if self.val_fraction is not None and not 0.0 <= self.val_fraction < 1.0:
            found.append(f"The validation fraction must be in [0, 1), got {self.val_fraction}.")
        return found

    def to_dict(self) -> dict:
        data = asdict(self)
        data["patch_size"] = None if self.patch_size is None else list(self.patch_size)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; expected some of {sorted(known)}")
        values = dict(data)
        if values.get("patch_size") is not None:
            values["patch_size"] = tuple(int(v) for v in values["patch_size"])
        return cls(**values)
