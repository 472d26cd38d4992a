"""Per-epoch metrics: a CSV in the output folder and a PNG of the training curves.

matplotlib is optional (not a runtime dependency; 3D Slicer ships none): without it the PNG is
drawn with numpy (axes, ticks, labels and legends in a built-in 5x7 pixel font) and written by
SimpleITK.
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
_INK, _GRID = (40, 40, 40), (225, 225, 225)
_PANEL = (200, 300)  # rows, columns of one panel before the 2x enlargement
_LEFT, _RIGHT, _TOP, _BOTTOM = 36, 8, 18, 28  # margins around the plot area
_said_no_matplotlib = False

# A 5x7 pixel font: per character, 7 rows of 5 bits (hex pairs), top row first.
_GLYPHS = {"0": "0e11131519110e", "1": "040c040404040e", "2": "0e11010204081f", "3": "1f02040201110e",
           "4": "02060a121f0202", "5": "1f101e0101110e", "6": "0608101e11110e", "7": "1f010204080808",
           "8": "0e11110e11110e", "9": "0e11110f01020c", "A": "0e11111f111111", "B": "1e11111e11111e",
           "C": "0e11101010110e", "D": "1c12111111121c", "E": "1f10101e10101f", "F": "1f10101e101010",
           "G": "0e11101711110f", "H": "1111111f111111", "I": "0e04040404040e", "J": "0702020202120c",
           "K": "11121418141211", "L": "1010101010101f", "M": "111b1515111111", "N": "11111915131111",
           "O": "0e11111111110e", "P": "1e11111e101010", "Q": "0e11111115120d", "R": "1e11111e141211",
           "S": "0f10100e01011e", "T": "1f040404040404", "U": "1111111111110e", "V": "11111111110a04",
           "W": "1111111515150a", "X": "11110a040a1111", "Y": "11110a04040404", "Z": "1f01020408101f",
           ".": "00000000000c0c", ",": "000000000c0408", "-": "0000001f000000", "+": "0004041f040400",
           "(": "02040808080402", ")": "08040202020408", "/": "01010204081010", ":": "000c0c000c0c00",
           "_": "0000000000001f", "%": "18190204081303", "?": "0e110102040004", " ": "00000000000000"}


def _text(canvas, row: int, col: int, text: str, colour=_INK) -> None:
    """Draw `text` (upper case) with its top-left corner at (row, col); clipped to the canvas."""
    h, w = canvas.shape[:2]
    for i, ch in enumerate(text.upper()):
        bits = bytes.fromhex(_GLYPHS.get(ch, _GLYPHS["?"]))
        for r, pattern in enumerate(bits):
            for c in range(5):
                y, x = row + r, col + 6 * i + c
                if pattern & (0x10 >> c) and 0 <= y < h and 0 <= x < w:
                    canvas[y, x] = colour


def _text_width(text: str) -> int:
    return 6 * len(text) - 1


def _nice_step(span: float, count: int) -> float:
    import math

    raw = max(span, 1e-12) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def _ticks(lo: float, hi: float, count: int = 4, integer: bool = False):
    """Round tick values covering [lo, hi], and the range they span."""
    import math

    step = _nice_step(hi - lo if hi > lo else 1.0, count)
    if integer:
        step = max(1, int(math.ceil(step)))
    first, last = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    if last <= first:
        last = first + step
    n = int(round((last - first) / step))
    return [first + i * step for i in range(n + 1)], (first, last)


def _label(value: float) -> str:
    text = f"{value:.3g}"
    return text.replace("e-0", "e-").replace("e+0", "e")


def _panel(series: Sequence[Sequence[tuple]], names: Sequence[str], epochs: Sequence[float], y_range, title: str,
           empty: str = ""):
    """A white panel: title, axes with ticks and labels, one polyline per series, and a legend."""
    import numpy as np

    h, w = _PANEL
    canvas = np.full((h, w, 3), 255, np.uint8)
    _text(canvas, 4, max(0, (w - _text_width(title)) // 2), title)
    xs = list(epochs) or [1, 2]
    x_ticks, (x0, x1) = _ticks(min(xs), max(max(xs), min(xs) + 1), 5, integer=True)
    y_ticks, (y0, y1) = _ticks(*y_range)
    top, bottom, left, right = _TOP, h - _BOTTOM, _LEFT, w - _RIGHT

    def pixel(x, y):
        return (bottom - (y - y0) / (y1 - y0) * (bottom - top), left + (x - x0) / (x1 - x0) * (right - left))

    for y in y_ticks:
        r = int(round(pixel(x0, y)[0]))
        canvas[r, left + 1:right] = _GRID
        canvas[r, left - 3:left] = _INK
        label = _label(y)
        _text(canvas, r - 3, left - 5 - _text_width(label), label)
    for x in x_ticks:
        c = int(round(pixel(x, y0)[1]))
        canvas[bottom + 1:bottom + 4, c] = _INK
        label = _label(x)
        _text(canvas, bottom + 6, c - _text_width(label) // 2, label)
    _text(canvas, h - 8, (left + right - _text_width("epoch")) // 2, "epoch")
    canvas[top:bottom + 1, left] = canvas[bottom, left:right + 1] = _INK
    for colour, points in zip(_PALETTE * 4, series):
        for (xa, ya), (xb, yb) in zip(points, list(points[1:]) or points):
            (ra, ca), (rb, cb) = pixel(xa, ya), pixel(xb, yb)
            t = np.linspace(0, 1, int(max(abs(ra - rb), abs(ca - cb))) + 2)
            rr = np.clip(np.round(ra + (rb - ra) * t).astype(int), top, bottom - 1)  # inside the plot area
            cc = np.clip(np.round(ca + (cb - ca) * t).astype(int), left + 1, right)
            for dr in (0, 1):
                canvas[rr + dr, cc] = colour
    shown = [(colour, name[:24]) for colour, points, name in zip(_PALETTE * 4, series, names) if points]
    if shown:  # legend, top right inside the plot
        width = 16 + max(_text_width(name) for _, name in shown)
        c0, r0 = right - width - 4, top + 4
        canvas[r0 - 2:r0 + 10 * len(shown), c0 - 3:right - 1] = 255
        for i, (colour, name) in enumerate(shown):
            r = r0 + 10 * i
            canvas[r + 3:r + 5, c0:c0 + 10] = colour
            _text(canvas, r, c0 + 14, name)
    elif empty:
        _text(canvas, (top + bottom) // 2 - 3, (left + right - _text_width(empty)) // 2, empty)
    return canvas


def _write_plain_png(rows: Sequence[Dict], path: Path) -> bool:
    """Loss (left) and validation Dice per label (right, 0..1), without a plotting library."""
    import numpy as np
    import SimpleITK as sitk

    global _said_no_matplotlib
    if not rows:
        return False
    loss = [(r["epoch"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    keys = [k for k in rows[0] if k.startswith("dice_")]
    dice = [[(r["epoch"], r[k]) for r in rows if r.get(k) is not None] for k in keys]
    losses = [y for _, y in loss] or [0.0]
    epochs = [r["epoch"] for r in rows]
    gap = np.full((_PANEL[0], 8, 3), 255, np.uint8)
    panels = [_panel([loss], ["train loss"], epochs, (min(0.0, min(losses)), max(losses)), "Dice + CE loss (training)"),
              gap, _panel(dice, [k[len("dice_"):] for k in keys], epochs, (0.0, 1.0), "validation Dice",
                     empty="no validation yet" if keys else "no validation cases")]
    image = np.concatenate(panels, axis=1)
    image = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)  # 5x7 text becomes 10x14: readable
    with atomic_path(path) as tmp:
        sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(image), isVector=True), str(tmp))
    if not _said_no_matplotlib:
        log.info("matplotlib is not installed: %s is drawn without it (pip install matplotlib for finer plots)",
                 path.name)
        _said_no_matplotlib = True
    return True
