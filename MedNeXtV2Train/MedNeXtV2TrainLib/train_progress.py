"""Training progress: the engine's JSON progress line turned into a typed update.

`mednextv2 train --progress json` writes one object per line with `stage, fraction, eta_s,
message` (what every command writes; the Segment module's parser reads those and keeps the rest
in `extra`) plus, for training, `epoch, iteration, loss, dice` (label name -> validation Dice) and
`lr`. `epoch` is the epoch in progress, counted from 1; `iteration` counts within it. `dice` is
the validation of the last completed epoch, repeated on every line until the next one, so it
belongs to `dice_epoch` when the engine says so, else to `epoch - 1`. Fields may be missing or
null on any line (a validation line has Dice but no loss); wrong types are dropped, not fatal,
because a progress display must never kill a training run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

from MedNeXtV2SegmentLib.progress import ProgressEvent, finite_number, format_duration, parse_progress_line


def _count(value: Any) -> Optional[int]:
    number = finite_number(value)
    return None if number is None or number < 0 or number != int(number) else int(number)


@dataclass(frozen=True)
class TrainingUpdate:
    stage: str
    fraction: float
    eta_s: Optional[float]
    message: str
    epoch: Optional[int] = None        # in progress, from 1
    epochs: Optional[int] = None       # total, when the engine knows it (an epoch budget)
    iteration: Optional[int] = None    # within the epoch
    loss: Optional[float] = None
    dice: Dict[str, float] = field(default_factory=dict)
    dice_epoch: Optional[int] = None   # the completed epoch the Dice values were measured after
    lr: Optional[float] = None
    epochs_done: Optional[int] = None  # completed epochs, when the engine says so

    @property
    def mean_dice(self) -> Optional[float]:
        return sum(self.dice.values()) / len(self.dice) if self.dice else None

    def status_text(self) -> str:
        """One line for the status label: "Epoch 3/20 · loss 0.412 · Dice 0.81 · lr 1.0e-03" (the ETA has its own)."""
        parts = []
        if self.epoch is not None:
            parts.append(f"Epoch {self.epoch}" + (f"/{self.epochs}" if self.epochs else ""))
        elif self.stage:
            parts.append(self.stage.capitalize())
        if self.loss is not None:
            parts.append(f"loss {self.loss:.3f}")
        if self.mean_dice is not None:
            parts.append(f"Dice {self.mean_dice:.2f}")
        if self.lr is not None:
            parts.append(f"lr {self.lr:.1e}")
        if self.message and self.epoch is None:
            parts.append(self.message)
        return " · ".join(parts)


def format_eta(seconds: float) -> str:
    return f"{format_duration(max(0.0, seconds))} left"


def training_update(event: ProgressEvent) -> TrainingUpdate:
    """A TrainingUpdate from one parsed progress event; training fields come from `event.extra`."""
    extra: Mapping[str, Any] = event.extra
    dice_in = extra.get("dice")
    dice = {}
    if isinstance(dice_in, Mapping):
        dice = {str(k): v for k, v in ((k, finite_number(v)) for k, v in dice_in.items()) if v is not None}
    epoch = _count(extra.get("epoch"))
    dice_epoch = _count(extra.get("dice_epoch"))
    if dice_epoch is None and dice and epoch is not None:
        dice_epoch = epoch - 1
    return TrainingUpdate(
        stage=event.stage, fraction=event.fraction, eta_s=event.eta_s, message=event.message,
        epoch=epoch,
        epochs=_count(extra.get("epochs")),
        iteration=_count(extra.get("iteration")),
        loss=finite_number(extra.get("loss")),
        dice=dice,
        dice_epoch=dice_epoch,
        lr=finite_number(extra.get("lr")),
        epochs_done=_count(extra.get("epochs_done")),
    )


def parse_training_line(line: str) -> Optional[TrainingUpdate]:
    """The update on one stdout line of the engine, or None for a line that is not progress."""
    event = parse_progress_line(line)
    return None if event is None else training_update(event)
