"""Training presets: what "quick / standard / thorough" mean as a budget and a patch size.

A time budget (`--minutes`) ends training gracefully when it runs out, so a quick run finishes
when the user expects whatever the machine; the thorough preset asks for a fixed number of epochs
because its point is convergence, not the clock. The engine checks the patch sizes (TrainSettings.problems).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple



@dataclass(frozen=True)
class TrainingPreset:
    name: str
    title: str
    minutes: Optional[int]
    epochs: Optional[int]
    patch_size: Optional[Tuple[int, int, int]]  # (z, y, x); None: the engine's plan for the device
    description: str

    def budget_text(self) -> str:
        if self.minutes is not None:
            return f"{self.minutes} min"
        return f"{self.epochs} epochs"


TRAINING_PRESETS: Dict[str, TrainingPreset] = {p.name: p for p in (
    # Quick leaves the patch to the engine: 32^3 on a CPU, where small patches learn most per minute,
    # and as large as the GPU's memory allows on CUDA.
    TrainingPreset("quick", "Quick", minutes=15, epochs=None, patch_size=None,
                   description="15 minutes; a first result on a laptop, good for checking the labels"),
    TrainingPreset("standard", "Standard", minutes=90, epochs=None, patch_size=(96, 96, 96),
                   description="90 minutes; a useful fine-tune on a GPU"),
    TrainingPreset("thorough", "Thorough", minutes=None, epochs=300, patch_size=(128, 128, 128),
                   description="300 epochs; for the best model, needs a GPU and hours"),
)}
DEFAULT_PRESET = "quick"


def get_preset(name: str) -> TrainingPreset:
    try:
        return TRAINING_PRESETS[name]
    except KeyError as e:
        raise ValueError(f"unknown training preset {name!r}; choose one of {', '.join(TRAINING_PRESETS)}") from e

