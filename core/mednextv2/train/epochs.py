"""What one epoch produced (`EpochRecord`), and the outputs written after each epoch (handlers).

The loop builds one record per epoch and hands it to every handler in order; a new output
(another file, a log line, a notification) is one more handler, not an edit of the loop.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional

from mednextv2.train import checkpoint, curves

if TYPE_CHECKING:  # the loop imports this module
    from mednextv2.train.loop import Trainer

DICE_PREFIX = "dice_"  # metrics.csv column per label: dice_<name>


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    iterations: int
    train_loss: float
    lr: float  # learning rate of the epoch's last step
    time_s: float  # since the run started (planning included)
    data_wait_s: float
    progress: float  # of the learning-rate schedule, 0..1 (1: warm-up and decay completed)
    dice: Dict[str, Optional[float]] = field(default_factory=dict)  # per label; empty: not validated

    @property
    def validated(self) -> bool:
        return bool(self.dice)

    @property
    def mean_dice(self) -> Optional[float]:
        finite = [v for v in self.dice.values() if v is not None and not math.isnan(v)]
        return round(sum(finite) / len(finite), 4) if finite else None

    def csv_row(self) -> dict:
        """One metrics.csv row: the scalar fields, dice_<name> per label, mean_dice."""
        row = {k: v for k, v in asdict(self).items() if k != "dice"}
        row.update({f"{DICE_PREFIX}{name}": v for name, v in self.dice.items()})
        row["mean_dice"] = self.mean_dice
        return row

    @classmethod
    def from_dict(cls, data: dict) -> "EpochRecord":
        data = dict(data)
        if "dice" not in data:  # a checkpoint from before EpochRecord held flat metrics.csv rows
            data["dice"] = {k[len(DICE_PREFIX):]: data.pop(k) for k in list(data) if k.startswith(DICE_PREFIX)}
            data.pop("mean_dice", None)
            data.setdefault("progress", 0.0)
        return cls(**data)


class EpochHandler:
    """Called by the loop on the main rank after each epoch; `improved`: this epoch is the new best."""

    def __call__(self, trainer: "Trainer", record: EpochRecord, improved: bool) -> None:
        raise NotImplementedError


class CheckpointHandler(EpochHandler):
    """best.pt when the epoch improved, latest.pt (for --resume) always."""

    def __call__(self, trainer, record, improved):
        if improved:
            checkpoint.save_atomic({"model": trainer.model.state_dict()}, trainer.work / checkpoint.BEST)
        trainer.save_latest()


class CsvHandler(EpochHandler):
    def __init__(self, name: str = "metrics.csv") -> None:
        self.name = name

    def __call__(self, trainer, record, improved):
        curves.write_csv(rows(trainer.state.history), trainer.work / self.name)


class CurveHandler(EpochHandler):
    def __init__(self, name: str = "training_curve.png") -> None:
        self.name = name

    def __call__(self, trainer, record, improved):
        curves.write_png(rows(trainer.state.history), trainer.work / self.name)


def rows(history: List[EpochRecord]) -> List[dict]:
    return [r.csv_row() for r in history]


def default_handlers() -> List[EpochHandler]:
    return [CheckpointHandler(), CsvHandler(), CurveHandler()]


def find(history: List[EpochRecord], epoch: int) -> Optional[EpochRecord]:
    return next((r for r in history if r.epoch == epoch), None)

