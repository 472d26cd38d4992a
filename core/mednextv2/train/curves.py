"""Per-epoch metrics: a CSV in the output folder and a PNG of the training curves.

matplotlib is optional (not a runtime dependency): without it the PNG is skipped with a log line.
"""
from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Dict, List, Sequence

log = logging.getLogger(__name__)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_csv(rows: Sequence[Dict], path: Path) -> None:
    if not rows:
        return
    columns: List[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    _atomic_write(path, buf.getvalue().encode())


def write_png(rows: Sequence[Dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: skipping the training-curve PNG (the CSV has the numbers)")
        return False
    if not rows:
        return False
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("Dice + CE loss")
    ax_loss.legend()
    dice_keys = [k for k in rows[0] if k.startswith("dice_")]
    for key in dice_keys:
        points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax_dice.plot(*zip(*points), marker="o", label=key[len("dice_"):])
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("validation Dice")
    ax_dice.set_ylim(0, 1)
    if dice_keys:
        ax_dice.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    _atomic_write(path, buf.getvalue())
    return True
