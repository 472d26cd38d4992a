"""A `--minutes M` training run on the real MR tissue map, and what it must keep: used by
test_train_budget.py (1 min) and benchmarks/bench_train_budget.py (3 min, full resolution)."""
from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from mednextv2.train import TrainOptions, run_training
from mednextv2.train.demo import split_scan

LR = 3e-3


def allowed_s(minutes: float) -> float:
    """The whole run (checks, plan, cache, training, final validation, bundle) ends within this."""
    return max(1.1 * minutes * 60, minutes * 60 + 30)


def train_tissue_map(folder: Path, data_dir: Path, minutes: float, spacing: Optional[Sequence[float]],
                     patch: Sequence[int]) -> Tuple[object, float]:
    """v2-tiny on the posterior part of the template, validated on the held-out anterior part;
    returns the run's result and its wall time in seconds."""
    tissue = data_dir / "mr-brain-tissue"
    dataset, _, _ = split_scan(folder / "data", tissue / "icbm152_2009a_t1.nii.gz",
                               tissue / "icbm152_2009a_tissue.nii.gz", list_heldout=True)
    started = time.monotonic()
    result = run_training(TrainOptions(
        dataset=str(dataset), output=str(folder / "model"), preset="v2-tiny", minutes=minutes, spacing=spacing,
        patch=patch, device="cpu", val_cases=("anterior",), lr=LR, progress="none", seed=0))
    return result, time.monotonic() - started


def metrics_rows(bundle: Path) -> List[dict]:
    """metrics.csv of a trained bundle: one row per epoch (progress, lr, mean_dice when validated)."""
    with open(Path(bundle) / "metrics.csv") as f:
        return list(csv.DictReader(f))
