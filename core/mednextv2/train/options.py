"""Everything a training run is configured with: one frozen, JSON-able object (the CLI fills it)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Tuple

from mednextv2.errors import InputError
from mednextv2.threads import check_threads

DEFAULT_EPOCHS = 100
ITERATIONS_PER_EPOCH = {"cuda": 250, "mps": 100, "cpu": 50}  # nnU-Net's 250 where a GPU makes it cheap


@dataclass(frozen=True)
class TrainOptions:
    dataset: str
    output: str
    base: Optional[str] = None  # bundle path or catalog id
    preset: Optional[str] = None  # architecture when training from scratch
    minutes: Optional[float] = None
    epochs: Optional[int] = None
    iterations: Optional[int] = None  # per epoch; None: per device (ITERATIONS_PER_EPOCH)
    patch: Optional[Tuple[int, int, int]] = None
    spacing: Optional[Tuple[float, float, float]] = None
    batch_size: int = 2
    device: str = "auto"
    val_fraction: float = 0.2
    val_cases: Tuple[str, ...] = ()
    val_every: Optional[int] = None  # None: whenever training since the last validation took 4x its cost
    resume: bool = False
    seed: int = 0
    progress: str = "bar"
    lr: float = 1e-3
    encoder_lr_scale: float = 1.0  # 0 freezes the encoder
    checkpointing: bool = False  # activation checkpointing of every stage
    precision: str = "auto"  # auto (bf16 on CUDA where supported, else fp16; fp32 elsewhere) | fp32
    elastic: bool = False
    grad_clip: float = 12.0
    work_dir: Optional[str] = None
    title: Optional[str] = None
    threads: Optional[int] = None  # CPU threads for torch; None: the cores free now (mednextv2.threads)

    def __post_init__(self) -> None:
        if self.minutes is not None and self.minutes <= 0:
            raise InputError(f"--minutes must be positive, got {self.minutes}")
        if self.epochs is not None and self.epochs < 1:
            raise InputError(f"--epochs must be at least 1, got {self.epochs}")
        if self.iterations is not None and self.iterations < 1:
            raise InputError(f"--iterations must be at least 1, got {self.iterations}")
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_every is not None and self.val_every < 1:
            raise InputError(f"--val-every must be at least 1, got {self.val_every}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 0 <= self.encoder_lr_scale <= 1:
            raise InputError(f"--encoder-lr-scale must be in [0, 1] (0 freezes the encoder), got {self.encoder_lr_scale}")
        if self.base and self.preset:
            raise InputError("give --base (fine-tune a model) or --preset (train from scratch), not both")
        if self.precision not in ("auto", "fp32"):
            raise InputError(f"--precision must be auto or fp32, got {self.precision!r}")
        check_threads(self.threads)
        if self.lr <= 0:
            raise InputError(f"--lr must be positive, got {self.lr}")

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
