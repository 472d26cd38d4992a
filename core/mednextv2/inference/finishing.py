"""The stitched class scores -> labels on the input grid, slab by slab, as the sliding window finishes them.

`LabelFinisher(record, n_classes)` is the one step from final mean logits (the network grid) to
the label array (the input grid). The sliding window calls `begin(axis)` before its first tile
(again after an out-of-memory restart), then `add(start, scores)` with each run of network-grid
rows along `axis` that no later tile touches, in order; `result()` gives the labels.
`finish_whole(scores, axis)` does the same for a whole volume at once (`preprocessing.to_input_grid`).

Output rows are computed in fixed slabs along `axis` (SLAB_BYTES of float32 at most). A slab is
computed once its source rows (with the linear interpolation's neighbour row) have arrived, from
exactly those rows, so the way rows arrive (whole, or in runs of any length) never changes a value.
Per slab: softmax over the classes first where the record asks (nnU-Net v1), then separable
resampling, then the argmax. Along axis 0 this is the slab-wise resampling this step always did
(rows of z by their weights, then each (y, x) plane); along axis 1 or 2 it is z, then the other
in-plane axis, then the slab axis by its row weights, so that each step works on whole lines.
Everything derived from the final scores on the input grid is written in `_write_slab`: the labels,
and with `with_uncertainty` the uncertainty map (`preprocessing.class_uncertainty` of the same
resampled slab; 4 bytes per input voxel, no per-class array at the input's resolution).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from mednextv2.inference.preprocessing import (SLAB_BYTES, GridRecord, Shape, _axis_weights, _resample_axis,
                                               _rows_for_slab, argmax_classes, class_uncertainty, resample,
                                               unorient_array)


def label_dtype(n_classes: int) -> np.dtype:
    return np.dtype(np.uint8 if n_classes <= 256 else np.uint16)


class LabelFinisher:
    """Receives final network-grid scores in runs of rows and writes the labels on the input grid."""

    def __init__(self, record: GridRecord, n_classes: int, slab_bytes: int = SLAB_BYTES,
                 with_uncertainty: bool = False, probabilities: bool = False) -> None:
        """`probabilities`: the scores given are already probabilities (else logits; a
        softmax-first record turns them into probabilities per slab)."""
        self.record = record
        self.n_classes = int(n_classes)
        self.slab_bytes = int(slab_bytes)
        self.with_uncertainty = with_uncertainty
        self.probabilities = probabilities or record.softmax_first
        self.axis: Optional[int] = None
        self._labels: Optional[np.ndarray] = None
        self._uncertainty: Optional[np.ndarray] = None

    # ------------------------------------------------------------ the sliding window's side
    def begin(self, axis: int) -> None:
        """Start (or restart) a case whose rows arrive along `axis` of the network grid."""
        rec = self.record
        self.axis = int(axis)
        self._labels = np.zeros(rec.oriented_shape, dtype=label_dtype(self.n_classes))
        crop = tuple(slice(a, b) for a, b in rec.bbox)
        self._cropped = self._labels[crop]  # a view: written in place
        if self.with_uncertainty:  # zero outside the crop, where the label is background by construction
            self._uncertainty = np.zeros(rec.oriented_shape, dtype=np.float32)
            self._cropped_uncertainty = self._uncertainty[crop]
        n_in, n_out = rec.network_shape[self.axis], rec.cropped_shape[self.axis]
        self._first, last, _ = _axis_weights(n_in, n_out, rec.nearest_axis == self.axis)
        self._last = [int(i) for i in last]
        self._first = [int(i) for i in self._first]
        plane = 1
        for a in range(3):
            if a != self.axis:
                plane *= max(rec.network_shape[a], rec.cropped_shape[a])
        self._slab = max(1, min(n_out, self.slab_bytes // max(1, self.n_classes * plane * 4)))
        self._next = 0          # first output row along the axis not written yet
        self._received = 0      # source rows received so far
        self._held: Optional[torch.Tensor] = None  # source rows [self._held_lo, self._received) later slabs need
        self._held_lo = 0

    def add(self, start: int, scores: torch.Tensor) -> None:
        """Final scores (K, ...) of network rows [start, start + n) along the axis, the next ones in order.
        What later slabs need is copied, so the caller may reuse `scores`' memory afterwards."""
        if self.axis is None:
            raise RuntimeError("LabelFinisher.begin(axis) was not called")
        dim = 1 + self.axis
        if start != self._received:
            raise ValueError(f"rows along axis {self.axis} must arrive in order: got {start}, "
                             f"expected {self._received}")
        self._received = start + scores.shape[dim]
        if self._received > self.record.network_shape[self.axis]:
            raise ValueError(f"rows up to {self._received} along axis {self.axis}, "
                             f"the network grid has {self.record.network_shape[self.axis]}")
        n_out = self.record.cropped_shape[self.axis]
        while self._next < n_out:
            stop = min(n_out, self._next + self._slab)
            lo, hi = self._first[self._next], self._last[stop - 1] + 1
            if hi > self._received:
                break
            self._finish_slab(self._rows(lo, hi, start, scores).float(), lo, self._next, stop)
            self._next = stop
        keep = self._first[self._next] if self._next < n_out else self._received
        self._held = self._rows(keep, self._received, start, scores).clone() if keep < self._received else None
        self._held_lo = keep

    def result(self) -> np.ndarray:
        """The label array (z, y, x) on the input image's voxel grid, zero outside the crop."""
        if self._labels is None or self._next < self.record.cropped_shape[self.axis]:
            raise RuntimeError("LabelFinisher.result() before every row of the network grid arrived")
        rec = self.record
        return np.ascontiguousarray(unorient_array(self._labels, rec.permutation, rec.flips))

    def uncertainty(self) -> np.ndarray:
        """The float32 uncertainty map on the input image's voxel grid (a view; `with_uncertainty`)."""
        if self._uncertainty is None:
            raise RuntimeError("LabelFinisher was made without with_uncertainty")
        self.result()  # the same completeness check
        rec = self.record
        return unorient_array(self._uncertainty, rec.permutation, rec.flips)

    def finish_whole(self, scores: torch.Tensor, axis: int = 0) -> np.ndarray:
        self.begin(axis)
        self.add(0, scores)
        return self.result()

    # ------------------------------------------------------------ one slab
    def _rows(self, lo: int, hi: int, start: int, scores: torch.Tensor) -> torch.Tensor:
        """Source rows [lo, hi) from the held rows and the run that starts at `start`."""
        dim = 1 + self.axis
        parts = []
        if lo < start:
            parts.append(self._held.narrow(dim, lo - self._held_lo, min(hi, start) - lo))
        if hi > start:
            first = max(lo, start)
            parts.append(scores.narrow(dim, first - start, hi - first))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim)

    def _finish_slab(self, src: torch.Tensor, lo: int, start: int, stop: int) -> None:
        """Output rows [start, stop) along the axis from the float32 source rows [lo, ...)."""
        rec, axis = self.record, self.axis
        nearest = rec.nearest_axis
        out = rec.cropped_shape
        if rec.softmax_first:
            src = torch.softmax(src, dim=0)
        if axis == 0:
            rows = _rows_for_slab(src, rec.network_shape[0], out[0], start, stop, lo, nearest == 0)
            rows = resample(rows, (stop - start, out[1], out[2]), nearest if nearest in (1, 2) else None)
        else:
            other = 3 - axis
            rows = _resample_axis(src, 1, out[0], nearest == 0)  # the outermost axis: rows by their weights
            rows = _resample_axis(rows, 1 + other, out[other], nearest == other)
            rows = _rows_for_slab(rows, rec.network_shape[axis], out[axis], start, stop, lo, nearest == axis,
                                  dim=1 + axis)
        region = [slice(None)] * 3
        region[axis] = slice(start, stop)
        self._write_slab(tuple(region), rows)

    def _write_slab(self, region, scores: torch.Tensor) -> None:
        """scores: (K, ...) float32 on the input grid (the crop's frame) for `region`."""
        self._cropped[region] = argmax_classes(scores).numpy().astype(self._cropped.dtype, copy=False)
        if self._uncertainty is not None:
            self._cropped_uncertainty[region] = class_uncertainty(scores, self.probabilities).numpy()


def resample_argmax(scores: torch.Tensor, out_shape: Shape, nearest_axis: Optional[int] = None,
                    slab_bytes: int = SLAB_BYTES, uncertainty: Optional[np.ndarray] = None,
                    probabilities: bool = False) -> np.ndarray:
    """argmax over classes of `scores` (K, z, y, x) resampled to out_shape, slab by slab along z
    (finishing.LabelFinisher, fed the whole volume at once).

    `uncertainty`: a float32 array of out_shape, filled with `class_uncertainty` of the same
    resampled rows (`probabilities`: the scores are softmax probabilities, not logits).
    Peak extra memory: about 3 x K x slab x max(y_in*x_in, y_out*x_out) x 4 bytes <= ~3 x slab_bytes.
    """
    network_shape = tuple(int(n) for n in scores.shape[1:])
    record = GridRecord(tuple(out_shape), (0, 1, 2), (False, False, False), (1.0, 1.0, 1.0),
                        tuple((0, int(n)) for n in out_shape), (1.0, 1.0, 1.0), network_shape, nearest_axis)
    finisher = LabelFinisher(record, scores.shape[0], slab_bytes, with_uncertainty=uncertainty is not None,
                             probabilities=probabilities)
    labels = finisher.finish_whole(scores, axis=0)
    if uncertainty is not None:
        uncertainty[...] = finisher.uncertainty()
    return labels


def to_input_grid(scores: torch.Tensor, record: GridRecord, axis: int = 0) -> np.ndarray:
    """Class scores (K, *network_shape) -> label array (z, y, x) on the input image's voxel grid
    (finishing.LabelFinisher, fed the whole volume; `axis`: the axis it works along in slabs)."""
    if tuple(scores.shape[1:]) != record.network_shape:
        raise ValueError(f"prediction shape {tuple(scores.shape[1:])} != network grid {record.network_shape}")
    return LabelFinisher(record, scores.shape[0]).finish_whole(scores, axis)
