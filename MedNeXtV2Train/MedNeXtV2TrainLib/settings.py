"""The one parameter object of the wizard: drives the GUI, the engine's command line and the saved state."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Dict, List, Optional, Tuple

from mednextv2.errors import InputError
from mednextv2.inference.options import DEVICES
from mednextv2.network import PRESETS as NETWORKS
from mednextv2.train.options import TrainOptions

from MedNeXtV2TrainLib.presets import DEFAULT_PRESET, get_preset

# `mednextv2 train --preset` from scratch: the engine's v2 networks, smallest (the default) first.
ARCHITECTURES = tuple(sorted((name for name in NETWORKS if name.startswith("v2-")),
                             key=lambda name: NETWORKS[name]["n_channels"]))
# The engine's `train` options the wizard sets, as the wizard names them in its messages.
OPTION_WORDS = {"minutes": "The time budget (minutes)", "epochs": "The number of epochs",
                "iterations": "The iterations per epoch", "patch": "The patch size",
                "val_fraction": "The validation fraction", "seed": "The seed"}
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
        """Everything wrong with these settings, in words a user can act on; empty when fine.
        The values the engine takes are checked by the engine's own TrainOptions, one at a time,
        so that every problem is listed, not only the first."""
        found = []
        if not self.model_name.strip():
            found.append("Give the new model a name.")
        if self.base_model is None and self.architecture not in ARCHITECTURES:
            found.append(f"Architecture {self.architecture!r} is not one of {', '.join(ARCHITECTURES)}.")
        if self.modality not in MODALITIES:
            found.append(f"Modality {self.modality!r} is not one of {', '.join(MODALITIES)}.")
        if (self.minutes is None) == (self.epochs is None):
            found.append("Set either a time budget in minutes or a number of epochs, not both.")
        if self.device not in DEVICES:
            found.append(f"Device {self.device!r} is not one of {', '.join(DEVICES)}.")
        for option, value in self.engine_options().items():
            try:
                TrainOptions(dataset="", output="", **{option: value})
            except InputError as e:
                found.append(str(e).replace("--" + option.replace("_", "-"), OPTION_WORDS[option], 1) + ".")
        return found

    def engine_options(self) -> Dict[str, object]:
        """The TrainOptions fields these settings give a value (the rest: the engine's defaults)."""
        values = {"minutes": self.minutes, "epochs": self.epochs, "iterations": self.iterations,
                  "patch": self.patch_size, "val_fraction": self.val_fraction, "seed": self.seed}
        return {option: value for option, value in values.items() if value is not None}

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
