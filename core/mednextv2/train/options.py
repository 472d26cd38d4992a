"""Everything a training run is configured with: one frozen, JSON-able object (the CLI fills it)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional, Sequence, Tuple

from mednextv2.errors import InputError
from mednextv2.network.config import DIVISOR, PRESETS
from mednextv2.option_fields import cli
from mednextv2.progress import MODES
from mednextv2.threads import check_threads

DEFAULT_EPOCHS = 100
ITERATIONS_PER_EPOCH = {"cuda": 250, "mps": 100, "cpu": 50}  # nnU-Net's 250 where a GPU makes it cheap


# The default held-out split (train/run.split_cases), torch-free so the Train wizard states the same rule.
DEFAULT_VAL_FRACTION = 0.2
# Below this many cases with foreground the default holds none out: a held-out case would take a
# quarter or more of the data (with 3 copies of one template, training on all 3 reached a higher
# held-out Dice in 8 CPU minutes than training on 2 and validating on 1; docs/benchmarks.md, bench_train).
MIN_CASES_TO_HOLD_OUT = 5


def check_patch(patch: Sequence[int]) -> Tuple[int, int, int]:
    """A patch size the network can train on (z, y, x); InputError naming --patch otherwise.

    Sizes are multiples of DIVISOR (the four stride-2 downsamplings), and the bottleneck must
    keep more than one voxel: GroupNorm over a single value per channel has nothing to normalize
    (PyTorch refuses it with batch size 1, and it zeroes every feature otherwise)."""
    patch = tuple(int(p) for p in patch)
    if len(patch) != 3 or any(p < DIVISOR or p % DIVISOR for p in patch):
        raise InputError(f"--patch must be three sizes divisible by {DIVISOR} (z y x), got {list(patch)}")
    if all(p == DIVISOR for p in patch):
        raise InputError(f"--patch {' '.join(map(str, patch))} is too small for the network: it needs at least "
                         f"{2 * DIVISOR} on one axis (e.g. {2 * DIVISOR} {DIVISOR} {DIVISOR}), so that its bottleneck "
                         f"(the patch / {DIVISOR}) keeps more than one voxel")
    return patch



@dataclass(frozen=True)
class TrainOptions:
    """One field per `mednextv2 train` option: adding an option is adding a field here."""

    dataset: str = field(metadata=cli("dataset folder or .json/.csv list of image/label pairs", "dataset"))
    output: str = field(metadata=cli("output model bundle (folder, or .zip)", "-o", "--output"))
    base: Optional[str] = field(default=None, metadata=cli(
        "bundle path or catalog id to fine-tune from (keeps its preprocessing), or an AMAES pretrained "
        "MedNeXt encoder .pth (its encoder is loaded, the decoder starts fresh; AMAES's preprocessing)",
        group="start", metavar="MODEL|FILE.pth"))
    preset: Optional[str] = field(default=None, metadata=cli(
        "architecture to train from scratch (v2-tiny, v2-base, ...; default v2-base on CUDA, v2-tiny elsewhere)",
        group="start"))
    minutes: Optional[float] = field(default=None, metadata=cli("time budget; training ends gracefully when it runs out"))
    epochs: Optional[int] = field(default=None, metadata=cli("number of epochs (default 100 unless --minutes is given)"))
    iterations: Optional[int] = field(default=None, metadata=cli(  # None: per device (ITERATIONS_PER_EPOCH)
        "iterations per epoch (default 250 on CUDA, 50 on the CPU)"))
    patch: Optional[Tuple[int, int, int]] = field(default=None, metadata=cli(
        "patch size, multiples of 16", metavar=("Z", "Y", "X")))
    spacing: Optional[Tuple[float, float, float]] = field(default=None, metadata=cli(
        "target spacing in mm (default: the dataset median, or the base model's)", metavar=("Z", "Y", "X")))
    batch_size: int = field(default=2, metadata=cli("patches per step (default 2)"))
    device: str = field(default="auto", metadata=cli("auto, cuda, mps or cpu"))
    val_fraction: Optional[float] = field(default=None, metadata=cli(  # None: DEFAULT_VAL_FRACTION, see run.split_cases
        "fraction of cases held out (default 0.2 from 5 cases with foreground up; fewer are all trained on)", group="val"))
    val_cases: Tuple[str, ...] = field(default=(), metadata=cli(
        "case names held out for validation", group="val", metavar="NAME"))
    val_every: Optional[int] = field(default=None, metadata=cli(  # None: when training since the last took 4x its cost
        "validate every N epochs and after the last (default: as often as keeps validation under ~20%% of the time)"))
    resume: bool = field(default=False, metadata=cli("continue an interrupted run from its last checkpoint"))
    seed: int = field(default=0, metadata=cli("random seed (default 0)"))
    progress: str = field(default="bar", metadata=cli("progress as a bar, JSON lines or none", choices=MODES))
    lr: float = field(default=1e-3, metadata=cli("peak learning rate of AdamW (default 1e-3)"))
    encoder_lr_scale: float = field(default=1.0, metadata=cli(
        "encoder learning rate as a fraction of --lr; 0 freezes the encoder (default 1)"))
    checkpointing: bool = field(default=False, metadata=cli("activation checkpointing: less memory, slower"))
    precision: str = field(default="auto", metadata=cli(
        "auto: bf16 (else fp16) autocast on CUDA, fp32 elsewhere", choices=("auto", "fp32")))
    elastic: bool = field(default=False, metadata=cli("add elastic deformation to the augmentation"))
    grad_clip: float = 12.0  # no metadata: not a command-line option
    work_dir: Optional[str] = field(default=None, metadata=cli(
        "folder for cache, checkpoints and metrics (default OUTPUT.training)"))
    title: Optional[str] = field(default=None, metadata=cli("model title written into the bundle"))
    threads: Optional[int] = field(default=None, metadata=cli(
        "CPU threads for torch (default: the cores free now, re-checked while training)"))

    def __post_init__(self) -> None:
        if self.minutes is not None and self.minutes <= 0:
            raise InputError(f"--minutes must be positive, got {self.minutes}")
        if self.epochs is not None and self.epochs < 1:
            raise InputError(f"--epochs must be at least 1, got {self.epochs}")
        if self.iterations is not None and self.iterations < 1:
            raise InputError(f"--iterations must be at least 1, got {self.iterations}")
        if self.val_fraction is not None and not 0 <= self.val_fraction < 1:
            raise InputError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_every is not None and self.val_every < 1:
            raise InputError(f"--val-every must be at least 1, got {self.val_every}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 0 <= self.encoder_lr_scale <= 1:
            raise InputError(f"--encoder-lr-scale must be in [0, 1] (0 freezes the encoder), got {self.encoder_lr_scale}")
        if self.base and self.preset:
            raise InputError("give --base (fine-tune a model) or --preset (train from scratch), not both")
        for f in fields(self):
            choices = f.metadata.get("cli", {}).get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise InputError(f"--{f.name.replace('_', '-')} must be one of {', '.join(choices)}, "
                                 f"got {getattr(self, f.name)!r}")
        if self.preset is not None and self.preset not in PRESETS:
            raise InputError(f"--preset {self.preset!r}: no such architecture; choose one of {', '.join(PRESETS)}")
        check_threads(self.threads)
        if self.lr <= 0:
            raise InputError(f"--lr must be positive, got {self.lr}")
        if self.patch is not None:
            object.__setattr__(self, "patch", check_patch(self.patch))  # before hours of preprocessing

    @property
    def work_path(self) -> Path:
        """Cache, checkpoints, metrics: beside the output bundle so --resume finds them."""
        if self.work_dir:
            return Path(self.work_dir)
        out = Path(self.output)
        return out.with_name(out.name + ".training")

    def epochs_or_default(self) -> Optional[int]:
        if self.epochs is not None:
            return self.epochs
        return None if self.minutes is not None else DEFAULT_EPOCHS

    def to_dict(self) -> dict:
        return asdict(self)
