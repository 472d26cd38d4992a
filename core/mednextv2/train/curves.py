"""Per-epoch metrics: a CSV in the output folder and a PNG of the training curves.

matplotlib is optional (not a runtime dependency): without it the PNG is drawn with numpy and
written by SimpleITK, with lines and axes but no text (the CSV has the numbers).
"""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Dict, List, Sequence

from mednextv2.atomic import atomic_path, write_bytes

log = logging.getLogger(__name__)


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
    write_bytes(path, buf.getvalue().encode())


def write_png(rows: Sequence[Dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _write_plain_png(rows, path)
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
    write_bytes(path, buf.getvalue())
    return True


_PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def _panel(series: Sequence[Sequence[tuple]], y_range, size=(200, 320)):
    """A white panel with axes and one polyline per series of (x, y) points."""
    import numpy as np

    h, w = size
    canvas = np.full((h, w, 3), 255, np.uint8)
    canvas[h - 12, 10:w - 6] = canvas[6:h - 11, 10] = (90, 90, 90)
    xs = [x for points in series for x, _ in points] or [0, 1]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = y_range
    y1 = y1 if y1 > y0 else y0 + 1

    def pixel(x, y):
        return (h - 14 - (y - y0) / (y1 - y0) * (h - 22), 12 + (x - x0) / (x1 - x0) * (w - 20))

    for colour, points in zip(_PALETTE * 4, series):
        for (xa, ya), (xb, yb) in zip(points, list(points[1:]) or points):
            (ra, ca), (rb, cb) = pixel(xa, ya), pixel(xb, yb)
            t = np.linspace(0, 1, int(max(abs(ra - rb), abs(ca - cb))) + 2)
            rr = np.clip(np.round(ra + (rb - ra) * t).astype(int), 0, h - 1)
            cc = np.clip(np.round(ca + (cb - ca) * t).astype(int), 0, w - 1)
            for dr in (0, 1):
                canvas[np.clip(rr + dr, 0, h - 1), cc] = colour
    return canvas


def _write_plain_png(rows: Sequence[Dict], path: Path) -> bool:
    """Loss (left) and validation Dice per label (right, 0..1), without a plotting library."""
    import numpy as np
    import SimpleITK as sitk

    if not rows:
        return False
    loss = [(r["epoch"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    dice = [[(r["epoch"], r[k]) for r in rows if r.get(k) is not None] for k in rows[0] if k.startswith("dice_")]
    losses = [y for _, y in loss] or [0.0]
    panels = [_panel([loss], (min(0.0, min(losses)), max(losses))), np.full((200, 8, 3), 255, np.uint8),
              _panel([d for d in dice if d], (0.0, 1.0))]
    with atomic_path(path) as tmp:
        sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(np.concatenate(panels, axis=1)), isVector=True), str(tmp))
    log.info("matplotlib is not installed: drew %s without axis labels (the CSV has the numbers)", path.name)
    return True
