"""MedNeXt configuration: the official constructor's arguments, as data, with named presets."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Optional, Sequence, Union

N_STAGES = 9  # enc0..enc3, bottleneck, dec3..dec0
DIVISOR = 16  # four stride-2 downsamplings: patch sides must be multiples of this
GRN_NORMS = ("mean", "sum")

# name -> (base channels, block counts, expansion ratios); sizes from the MedNeXt-v2 paper
_V2_PATTERN = [3, 4, 8, 8, 8, 8, 8, 4, 3]
PRESETS: Dict[str, dict] = {
    "v2-base": dict(n_channels=32, block_counts=_V2_PATTERN, exp_r=_V2_PATTERN, grn=True),
    "v2-width2": dict(n_channels=64, block_counts=_V2_PATTERN, exp_r=_V2_PATTERN, grn=True),
    # The v2 structure at 8 base channels: ~4M parameters, trainable on a laptop CPU.
    "v2-tiny": dict(n_channels=8, block_counts=[1, 1, 2, 2, 2, 2, 2, 1, 1], exp_r=[2, 3, 4, 4, 4, 4, 4, 3, 2], grn=True),
    "v1-S": dict(n_channels=32, block_counts=[2] * 9, exp_r=[2] * 9, grn=False),
    "v1-B": dict(n_channels=32, block_counts=[2] * 9, exp_r=[2, 3, 4, 4, 4, 4, 4, 3, 2], grn=False),
    "v1-M": dict(n_channels=32, block_counts=[3, 4, 4, 4, 4, 4, 4, 4, 3], exp_r=[2, 3, 4, 4, 4, 4, 4, 3, 2], grn=False),
    "v1-L": dict(n_channels=32, block_counts=_V2_PATTERN, exp_r=_V2_PATTERN, grn=False),
}


def _stage_list(value: Union[int, Sequence[int]], name: str) -> List[int]:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a list of {N_STAGES} ints, got {value!r}")
    if isinstance(value, int):
        return [value] * N_STAGES
    values = list(value)
    if len(values) != N_STAGES or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{name} must be an int or a list of {N_STAGES} ints (enc0..enc3, bottleneck, dec3..dec0), got {value!r}")
    return values


@dataclass(frozen=True)
class MedNeXtConfig:
    """Arguments of the official `MedNeXt` constructor (`residual`: its do_res and do_res_up_down)."""

    in_channels: int = 1
    n_channels: int = 32
    n_classes: int = 2
    exp_r: Union[int, List[int]] = field(default_factory=lambda: list(_V2_PATTERN))
    kernel_size: int = 3
    block_counts: List[int] = field(default_factory=lambda: list(_V2_PATTERN))
    grn: bool = True
    # GRN's normaliser: "mean" over channels (the official code) or "sum" (the seed paper's formula).
    # Checkpoint shapes cannot tell them apart; they differ by a factor of C in the learned gamma.
    grn_norm: str = "mean"
    deep_supervision: bool = True
    # Expansion ratios of down_0..down_3; None: the official rule, the next stage's (exp_r[1..4]).
    # MONAI's MedNeXt expands its down blocks by the encoder stage's own ratio instead.
    down_exp_r: Optional[List[int]] = None
    # False: no residual connections at all (MONAI's MedNeXt default; the official code's do_res
    # and do_res_up_down both off). Absent from to_dict when True, the official network.
    residual: bool = True

    def __post_init__(self) -> None:
        for name in ("in_channels", "n_channels", "n_classes", "kernel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MedNeXtConfig.{name} must be a positive int, got {value!r}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"MedNeXtConfig.kernel_size must be odd (3 or 5), got {self.kernel_size}")
        if self.n_classes < 2:
            raise ValueError(f"MedNeXtConfig.n_classes must be at least 2 (background + one label), got {self.n_classes}")
        object.__setattr__(self, "exp_r", _stage_list(self.exp_r, "MedNeXtConfig.exp_r"))
        object.__setattr__(self, "block_counts", _stage_list(self.block_counts, "MedNeXtConfig.block_counts"))
        if min(self.exp_r) < 1 or min(self.block_counts) < 1:
            raise ValueError("MedNeXtConfig.exp_r and block_counts must be >= 1 in every stage")
        object.__setattr__(self, "grn", bool(self.grn))
        if self.grn_norm not in GRN_NORMS:
            raise ValueError(f"MedNeXtConfig.grn_norm must be one of {list(GRN_NORMS)}, got {self.grn_norm!r}")
        object.__setattr__(self, "deep_supervision", bool(self.deep_supervision))
        if not isinstance(self.residual, bool):
            raise ValueError(f"MedNeXtConfig.residual must be true or false, got {self.residual!r}")
        if self.down_exp_r is not None:
            down = list(self.down_exp_r)
            if len(down) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in down):
                raise ValueError(f"MedNeXtConfig.down_exp_r must be None or 4 ints >= 1 (down_0..down_3), got {self.down_exp_r!r}")
            object.__setattr__(self, "down_exp_r", None if down == self.exp_r[1:5] else down)

    @property
    def down_ratios(self) -> List[int]:
        """The expansion ratio of each down block, down_0..down_3."""
        return list(self.down_exp_r) if self.down_exp_r is not None else self.exp_r[1:5]

    @classmethod
    def preset(cls, name: str, in_channels: int = 1, n_classes: int = 2, kernel_size: int = 3, **overrides) -> "MedNeXtConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown MedNeXt preset {name!r}; choose one of {', '.join(PRESETS)}")
        values = dict(PRESETS[name], in_channels=in_channels, n_classes=n_classes, kernel_size=kernel_size)
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict:
        out = asdict(self)
        if out["down_exp_r"] is None:
            del out["down_exp_r"]  # the official rule: absent, as in every bundle before the field existed
        if out["residual"]:
            del out["residual"]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "MedNeXtConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown MedNeXt config field(s) {unknown}; expected {sorted(known)}")
        return cls(**data)

    def replace(self, **changes) -> "MedNeXtConfig":
        return type(self).from_dict({**self.to_dict(), **changes})
