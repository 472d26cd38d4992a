"""What the Finish page shows about a trained bundle: its id, title, labels and validation Dice."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from mednextv2.bundle import load_bundle


@dataclass(frozen=True)
class TrainedModel:
    path: Path
    id: str
    title: str
    labels: Tuple[str, ...]
    dice: Dict[str, float]  # validation Dice per label, from the bundle's provenance

    @property
    def mean_dice(self) -> Optional[float]:
        return sum(self.dice.values()) / len(self.dice) if self.dice else None

    def summary(self) -> str:
        text = f"{self.title} ({self.id}): {len(self.labels)} label(s)"
        if self.mean_dice is not None:
            text += f", mean validation Dice {self.mean_dice:.3f}"
        return text + "."


def read_trained_model(path: Path) -> TrainedModel:
    """Load the bundle `mednextv2 train` wrote (InputError from the engine if it is not valid)."""
    bundle = load_bundle(path)
    metrics = (bundle.spec.provenance.metrics if bundle.spec.provenance else None) or {}
    dice_in = metrics.get("dice") if isinstance(metrics, dict) else None
    dice = {str(k): float(v) for k, v in (dice_in or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return TrainedModel(Path(path), bundle.id, bundle.title, tuple(label.name for label in bundle.labels), dice)
