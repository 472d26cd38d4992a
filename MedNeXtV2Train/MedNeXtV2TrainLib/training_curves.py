"""Live curve data: training loss and validation Dice per label, over completed epochs, ready to draw.

The x axis counts completed epochs: a loss line of epoch e (in progress, from 1) lies in
[e - 1, e), placed by its iteration among the iterations seen in that epoch; the Dice measured
after epoch e lies at x = e. The same Dice is repeated on many lines, and a resumed run repeats
epochs: the last value for an epoch wins.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from MedNeXtV2TrainLib.train_progress import TrainingUpdate

Point = Tuple[float, float]
MAX_LOSS_POINTS = 400  # a curve of more points than the plot has pixels only costs time


@dataclass(frozen=True)
class Series:
    name: str
    points: Tuple[Point, ...]


class TrainingCurves:
    def __init__(self) -> None:
        self._loss: List[Tuple[int, Optional[int], float]] = []
        self._dice: Dict[str, Dict[int, float]] = {}
        self.last: Optional[TrainingUpdate] = None

    def add(self, update: TrainingUpdate) -> bool:
        """Record an update; True when a curve changed (the plot needs redrawing)."""
        self.last = update
        changed = False
        if update.loss is not None and update.epoch is not None:
            self._loss.append((update.epoch, update.iteration, update.loss))
            changed = True
        if update.dice and update.dice_epoch is not None:
            for name, value in update.dice.items():
                by_epoch = self._dice.setdefault(name, {})
                changed |= by_epoch.get(update.dice_epoch) != value
                by_epoch[update.dice_epoch] = value
        return changed

    def clear(self) -> None:
        self.__init__()

    def loss_series(self) -> Series:
        spans: Dict[int, Tuple[int, int]] = {}
        for epoch, iteration, _ in self._loss:
            if iteration is not None:
                lo, hi = spans.get(epoch, (iteration, iteration))
                spans[epoch] = (min(lo, iteration), max(hi, iteration))
        points = []
        for epoch, iteration, loss in self._loss:
            if iteration is None or epoch not in spans:
                points.append((float(epoch), loss))  # an end-of-epoch value
            else:
                lo, hi = spans[epoch]
                points.append((epoch - 1 + (iteration - lo) / (hi - lo + 1), loss))
        return Series("loss", tuple(_thin(points, MAX_LOSS_POINTS)))

    def dice_series(self) -> List[Series]:
        return [Series(name, tuple((float(e), v) for e, v in sorted(by_epoch.items())))
                for name, by_epoch in self._dice.items()]

    def best_dice(self) -> Optional[Tuple[int, float]]:
        """(epoch, mean Dice over labels) of the best validation so far."""
        epochs = set().union(*(d.keys() for d in self._dice.values())) if self._dice else set()
        best = None
        for epoch in sorted(epochs):
            values = [d[epoch] for d in self._dice.values() if epoch in d]
            mean = sum(values) / len(values)
            if best is None or mean > best[1]:
                best = (epoch, mean)
        return best


def _thin(points: Sequence[Point], limit: int) -> List[Point]:
    """At most `limit` points: means of equal runs, so spikes are smoothed rather than skipped."""
    if len(points) <= limit:
        return list(points)
    size = len(points) / limit
    out = []
    for i in range(limit):
        chunk = points[int(i * size): max(int((i + 1) * size), int(i * size) + 1)]
        out.append((sum(p[0] for p in chunk) / len(chunk), sum(p[1] for p in chunk) / len(chunk)))
    return out


def value_range(series: Sequence[Series], floor: Optional[float] = None, ceiling: Optional[float] = None) -> Tuple[float, float]:
    """The y range of the curves; `floor`/`ceiling` pin an end (Dice is drawn on [0, 1])."""
    values = [y for s in series for _, y in s.points]
    lo = floor if floor is not None else (min(values) if values else 0.0)
    hi = ceiling if ceiling is not None else (max(values) if values else 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def to_pixels(points: Sequence[Point], x_range: Tuple[float, float], y_range: Tuple[float, float],
              rect: Tuple[int, int, int, int]) -> List[Point]:
    """Data points -> pixel points in rect (left, top, width, height); y grows downwards on screen."""
    left, top, width, height = rect
    (x0, x1), (y0, y1) = x_range, y_range
    sx = width / (x1 - x0) if x1 > x0 else 0.0
    sy = height / (y1 - y0) if y1 > y0 else 0.0
    return [(left + (x - x0) * sx, top + height - (min(max(y, y0), y1) - y0) * sy) for x, y in points]
