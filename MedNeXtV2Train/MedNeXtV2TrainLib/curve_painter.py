"""Draw the live training curves into a pixmap with Qt's QPainter.

`qt` is passed in: Slicer's PythonQt module inside Slicer, a PySide6 namespace in the tests that
render the wizard outside Slicer, so the same drawing code is checked by both. Lines are drawn
segment by segment (drawLine) because building a QPolygonF from a Python list differs between
the two bindings.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

from MedNeXtV2TrainLib.training_curves import Series, to_pixels, value_range

PALETTE = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207))
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 44, 10, 22, 22


def render_curves(qt, width: int, height: int, title: str, series: Sequence[Series],
                  y_range: Optional[Tuple[float, float]] = None, x_max: Optional[float] = None,
                  colors: Optional[Dict[str, Tuple[int, int, int]]] = None, empty_text: str = "waiting for data"):
    """A QPixmap with the curves, axes, a y scale and a legend."""
    pixmap = qt.QPixmap(width, height)
    pixmap.fill(qt.QColor(255, 255, 255))
    painter = qt.QPainter(pixmap)
    try:
        painter.setRenderHint(qt.QPainter.Antialiasing)
        rect = (MARGIN_LEFT, MARGIN_TOP, width - MARGIN_LEFT - MARGIN_RIGHT, height - MARGIN_TOP - MARGIN_BOTTOM)
        painter.setPen(qt.QColor(60, 60, 60))
        painter.drawText(MARGIN_LEFT, 15, title)
        left, top, w, h = rect
        painter.drawLine(qt.QPointF(left, top), qt.QPointF(left, top + h))
        painter.drawLine(qt.QPointF(left, top + h), qt.QPointF(left + w, top + h))
        points_present = any(s.points for s in series)
        if not points_present:
            painter.setPen(qt.QColor(150, 150, 150))
            painter.drawText(left + 10, top + h // 2, empty_text)
            return pixmap
        lo, hi = y_range or value_range(series)
        x_end = max([x for s in series for x, _ in s.points] + [x_max or 0.0, 1.0])
        painter.drawText(4, top + 10, f"{hi:.3g}")
        painter.drawText(4, top + h, f"{lo:.3g}")
        painter.drawText(left + w - 70, height - 5, f"epoch {x_end:.0f}")
        legend_x = left
        for index, s in enumerate(series):
            color = (colors or {}).get(s.name) or PALETTE[index % len(PALETTE)]
            pen = qt.QPen(qt.QColor(*color))
            pen.setWidth(2)
            painter.setPen(pen)
            pixels = to_pixels(s.points, (0.0, x_end), (lo, hi), rect)
            for (x0, y0), (x1, y1) in zip(pixels, pixels[1:]):
                painter.drawLine(qt.QPointF(x0, y0), qt.QPointF(x1, y1))
            if len(pixels) == 1:
                painter.drawEllipse(qt.QPointF(*pixels[0]), 2.5, 2.5)
            if len(series) > 1 or s.name != "loss":  # legend under the x axis, one colored name per curve
                name = s.name[:14]
                painter.drawText(legend_x, height - 5, name)
                legend_x += 8 * len(name) + 12
    finally:
        painter.end()
    return pixmap
