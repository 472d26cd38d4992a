"""Bring images onto the network's grid, and the prediction back onto the input grid, exactly.

Stages, in order, each recorded in a frozen `GridRecord` so that `to_input_grid` inverts them:
1. orientation: permute/flip array axes to the nearest LPS order, or the RAS order of Yucca-trained
   models (lossless; training must do the same, see `orient_array`), so a model sees the same
   anatomy whatever the file's direction;
2. crop to the non-zero box (when the plan says so);
3. normalize per channel (CT: clip + training mean/std; MR: per-image z-score; Yucca's volume
   z-norm + rescale for AMAES-based models);
4. resample to the target spacing. Separable linear interpolation, or the cubic spline of
   nnU-Net when the bundle's `preprocessing.resampling` asks for order 3 (imported nnU-Net
   models); when the spacing is anisotropic (`anisotropic_axis`) the slice axis uses nearest
   neighbour, so slices are never blended across 5 mm gaps.

Inverse (finishing.py): the class scores (logits) are resampled back in slabs and reduced to the
argmax slab by slab, so full-resolution float data for all classes never exists at once. The
uncertainty map, when asked for, comes from the same slabs (`class_uncertainty`). The
slab is sized so that its float32 block stays under `SLAB_BYTES` (16 MiB).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from mednextv2.bundle import Normalization, PreprocessingPlan
from mednextv2.errors import InputError

log = logging.getLogger(__name__)

ANISOTROPY_RATIO = 3.0
SLAB_BYTES = 16 * 2**20  # the finishing step runs beside the tiles: its slabs add to their peak
Shape = Tuple[int, int, int]


@dataclass(frozen=True)
class GridRecord:
    """Everything needed to map network-grid arrays back onto the input image's voxel grid."""

    input_shape: Shape                    # array (z, y, x) shape of the input image
    permutation: Tuple[int, int, int]     # oriented array = input array.transpose(permutation) ...
    flips: Tuple[bool, bool, bool]        # ... then flipped along these oriented axes
    oriented_spacing: Tuple[float, float, float]
    bbox: Tuple[Tuple[int, int], ...]     # (start, stop) per oriented axis of the non-zero crop
    network_spacing: Tuple[float, float, float]
    network_shape: Shape                  # shape fed to the sliding window
    nearest_axis: Optional[int]           # axis resampled with nearest neighbour (anisotropic data)
    softmax_first: bool = False           # scores go back as softmax probabilities (nnU-Net v1), not logits

    @property
    def oriented_shape(self) -> Shape:
        return tuple(self.input_shape[p] for p in self.permutation)

    @property
    def cropped_shape(self) -> Shape:
        return tuple(b - a for a, b in self.bbox)


@dataclass(frozen=True)
class Preprocessed:
    data: np.ndarray  # (C, z, y, x) float32 on the network grid
    record: GridRecord


# ---------------------------------------------------------------- orientation
def nearest_lps_axes(direction: Sequence[float]) -> Tuple[Tuple[int, int, int], Tuple[bool, bool, bool]]:
    """Array permutation and flips that bring an image to the nearest LPS-ordered array.

    `direction` is SimpleITK's row-major 3x3 matrix (column i = world direction of index axis i).
    Array axis a holds index axis 2 - a. Each index axis goes to the world axis it is most
    parallel to, greedily by largest |cosine|, so oblique matrices still give a permutation.
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    world_of_index = {}
    for flat in np.argsort(-np.abs(d), axis=None):
        w, i = divmod(int(flat), 3)
        if i not in world_of_index and w not in world_of_index.values():
            world_of_index[i] = w
    permutation = [0, 0, 0]
    flips = [False, False, False]
    for i, w in world_of_index.items():
        permutation[2 - w] = 2 - i
        flips[2 - w] = bool(d[w, i] < 0)
    return tuple(permutation), tuple(flips)


def nearest_ras_axes(direction: Sequence[float]) -> Tuple[Tuple[int, int, int], Tuple[bool, bool, bool]]:
    """Array permutation and flips to the array nibabel's closest canonical image holds: axes
    (x, y, z) along (R, A, S), as Yucca and AMAES feed their networks. It is the LPS order's
    array with its axes reversed and x and y flipped (R = -L, A = -P)."""
    permutation, flips = nearest_lps_axes(direction)
    return tuple(reversed(permutation)), (not flips[2], not flips[1], flips[0])


def orient_array(array: np.ndarray, permutation: Sequence[int], flips: Sequence[bool]) -> np.ndarray:
    """Apply the orientation to the last three axes of `array` (leading channel axes allowed)."""
    lead = array.ndim - 3
    out = array.transpose(tuple(range(lead)) + tuple(lead + p for p in permutation))
    flip_axes = tuple(lead + a for a in range(3) if flips[a])
    return np.flip(out, flip_axes) if flip_axes else out


def unorient_array(array: np.ndarray, permutation: Sequence[int], flips: Sequence[bool]) -> np.ndarray:
    lead = array.ndim - 3
    flip_axes = tuple(lead + a for a in range(3) if flips[a])
    out = np.flip(array, flip_axes) if flip_axes else array
    inverse = np.argsort(permutation)
    return out.transpose(tuple(range(lead)) + tuple(lead + int(p) for p in inverse))


# ---------------------------------------------------------------- crop, normalize
def nonzero_bbox(data: np.ndarray) -> Tuple[Tuple[int, int], ...]:
    mask = np.any(data != 0, axis=0)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append((int(hits[0]), int(hits[-1]) + 1) if hits.size else (0, mask.shape[axis]))
    return tuple(box)


def normalize_channel(channel: np.ndarray, norm: Normalization, mask: Optional[np.ndarray]) -> np.ndarray:
    """In place on a float32 array; returns it."""
    if norm.scheme == "ct":
        np.clip(channel, norm.clip[0], norm.clip[1], out=channel)
        channel -= norm.mean
        channel /= max(norm.std, 1e-8)
    elif norm.scheme == "zscore":
        values = channel[mask] if mask is not None else channel
        mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
        channel -= mean
        channel /= max(std, 1e-8)
        if mask is not None:
            channel[~mask] = 0.0  # nnU-Net's use_mask_for_norm: outside the body is exactly 0
    elif norm.scheme == "volume_znorm":
        volume_znorm(channel, norm.upper_quantile, norm.rescale)
    elif norm.scheme != "none":
        raise InputError(f"unknown normalization scheme {norm.scheme!r}")
    return channel


def volume_znorm(channel: np.ndarray, upper_quantile: Optional[float], rescale: Optional[Tuple[float, float]]) -> np.ndarray:
    """Yucca's `volume_wise_znorm` in place (float32 array): the voxels above the minimum are the
    foreground (the minimum is taken to be background); values above the foreground's
    `upper_quantile` are clipped, the image is z-scored with the foreground's mean and std, then
    its min..max stretched linearly onto `rescale`. The crop's mask plays no part in it."""
    low = channel.min()
    mask = channel != low
    if not mask.any():  # a constant image: nothing to normalize; Yucca asserts a positive std here
        channel[...] = 0.0 if rescale is None else rescale[0]
        return channel
    if upper_quantile is not None:
        np.minimum(channel, np.quantile(channel[mask], upper_quantile), out=channel)
    values = channel[mask]
    mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
    channel -= mean
    channel /= max(std, 1e-8)
    if rescale is not None:
        lo, hi = float(channel.min()), float(channel.max())
        channel -= lo
        channel *= (rescale[1] - rescale[0]) / max(hi - lo, 1e-8)
        channel += rescale[0]
    return channel


# ---------------------------------------------------------------- resampling
def network_shape_for(shape: Shape, spacing: Sequence[float], target: Optional[Sequence[float]]) -> Shape:
    if target is None:
        return tuple(shape)
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def anisotropic_axis(spacing: Sequence[float]) -> Optional[int]:
    """The slice axis of an anisotropic spacing, or None when the spacing is not anisotropic.

    This is nnU-Net's rule (`get_do_separate_z` and `get_lowres_axis` in its resampling code, v1
    and v2 alike): a spacing is anisotropic when its largest value is more than 3 times its
    smallest, and its slice axis is the one axis with the largest value; when two axes share the
    largest value there is no single slice axis and nnU-Net resamples all axes together. Our
    resampling, the planner's target spacing and the training augmentation all ask this one
    function, so they agree on which axis holds the thick slices. (nnU-Net's planner compares
    with 3x the second-largest spacing instead; the two differ only when the two fine axes differ
    from each other by a large factor, which scans do not.)"""
    values = [float(v) for v in spacing]
    if max(values) <= ANISOTROPY_RATIO * min(values):
        return None
    coarse = [a for a, v in enumerate(values) if v == max(values)]
    return coarse[0] if len(coarse) == 1 else None


def slice_axis_if_anisotropic(spacing: Sequence[float], target: Optional[Sequence[float]],
                              force_separate: Optional[bool] = None) -> Optional[int]:
    """The axis resampled on its own (nearest neighbour), as nnU-Net decides it: the input
    spacing's slice axis if it is anisotropic, else the target's. `force_separate` (a plan's
    `force_separate_z`): False never, True always the input's coarsest axis."""
    if force_separate is False:
        return None
    if force_separate:
        return int(np.argmax(spacing))
    for s in (spacing, target):
        if s is not None and max(s) > ANISOTROPY_RATIO * min(s):
            return anisotropic_axis(s)
    return None


def resample_spline(data: np.ndarray, out_shape: Shape, separate_axis: Optional[int], order: int = 3,
                    order_z: int = 0) -> np.ndarray:
    """(C, z, y, x) -> out_shape with a B-spline of `order`, computed as nnU-Net computes it for
    image data: skimage's resize (scipy.ndimage.zoom, grid mode, edge values extended, clipped to
    the input's range) in float64,
    slice by slice when `separate_axis` is set, that axis then resampled with nearest neighbour
    (order_z 0) or linearly (order_z 1)."""
    try:
        from scipy import ndimage  # only imported nnU-Net models need it: not a runtime dependency
    except ImportError as e:
        raise InputError("this model was imported from nnU-Net and resamples with nnU-Net's cubic spline, "
                         "which needs scipy: install it with `pip install scipy` (3D Slicer ships it)") from e

    def zoom(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        if tuple(x.shape) == tuple(shape):
            return x
        factors = [1.0 / f for f in np.divide(x.shape, shape)]  # as skimage.transform.resize computes them
        out = ndimage.zoom(x, factors, order=order, mode="nearest", grid_mode=True)
        # skimage's resize clips to the range of what it was given (clip=True, nnU-Net keeps the
        # default): the spline's overshoot at edges is cut per call, i.e. per slice when separate
        return np.clip(out, x.min(), x.max(), out=out)

    out = np.empty((data.shape[0],) + tuple(out_shape), dtype=np.float32)
    for c in range(data.shape[0]):
        x = data[c].astype(np.float64)
        if separate_axis is None:
            out[c] = zoom(x, out_shape)
            continue
        plane = [n for a, n in enumerate(out_shape) if a != separate_axis]
        slices = np.stack([zoom(p, plane) for p in np.moveaxis(x, separate_axis, 0)], axis=separate_axis)
        out[c] = _resample_axis(torch.from_numpy(slices), separate_axis, out_shape[separate_axis], order_z == 0).numpy()
    return out


def _axis_weights(n_in: int, n_out: int, nearest: bool, device=None):
    """Source indices and weights for half-pixel-centred (align_corners=False) interpolation."""
    pos = (torch.arange(n_out, dtype=torch.float64, device=device) + 0.5) * (n_in / n_out) - 0.5
    pos = pos.clamp(0, n_in - 1)
    if nearest:
        i0 = torch.floor(pos + 0.5).long().clamp(0, n_in - 1)
        return i0, i0, torch.zeros(n_out, dtype=torch.float32, device=device)
    i0 = torch.floor(pos).long()
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, (pos - i0).float()


def _resample_outer_axis(x: torch.Tensor, axis: int, n_out: int, nearest: bool) -> torch.Tensor:
    """The outermost spatial axis: gather whole planes (contiguous copies) and blend them."""
    i0, i1, w = _axis_weights(x.shape[axis], n_out, nearest, x.device)
    a = x.index_select(axis, i0)
    if nearest:
        return a
    shape = [1] * x.dim()
    shape[axis] = n_out
    w = w.to(x.dtype).view(shape)
    return a.mul_(1 - w).add_(x.index_select(axis, i1).mul_(w))


def _resample_axis(x: torch.Tensor, axis: int, n_out: int, nearest: bool) -> torch.Tensor:
    """Resample dim `axis` of x to n_out samples (half-pixel centres, like align_corners=False)."""
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    if axis == x.dim() - 3:
        return _resample_outer_axis(x, axis, n_out, nearest)
    # Inner axes: F.interpolate's vectorised kernels; index_select there is ~100x slower.
    moved = x.movedim(axis, -1)
    lead_shape = moved.shape[:-1]
    flat = moved.reshape(1, -1, n_in)
    if nearest:
        out = F.interpolate(flat, size=n_out, mode="nearest-exact")
    else:
        out = F.interpolate(flat, size=n_out, mode="linear", align_corners=False)
    return out.reshape(*lead_shape, n_out).movedim(-1, axis)


def _resample_plane(x: torch.Tensor, size_yx: Tuple[int, int], nearest_axis: Optional[int]) -> torch.Tensor:
    """Resample the last two dims (y, x); bilinear in one pass unless one of them is nearest."""
    if tuple(x.shape[-2:]) == tuple(size_yx):
        return x
    if nearest_axis in (1, 2):
        x = _resample_axis(x, x.dim() - 2, size_yx[0], nearest_axis == 1)
        return _resample_axis(x, x.dim() - 1, size_yx[1], nearest_axis == 2)
    lead_shape = x.shape[:-2]
    out = F.interpolate(x.reshape(1, -1, *x.shape[-2:]), size=tuple(size_yx), mode="bilinear", align_corners=False)
    return out.reshape(*lead_shape, *size_yx)


def resample(x: torch.Tensor, out_shape: Shape, nearest_axis: Optional[int] = None) -> torch.Tensor:
    """Separable linear (nearest on `nearest_axis`) resampling of the last 3 dims of a float tensor."""
    outer = x.dim() - 3
    shrink_first = out_shape[0] < x.shape[outer]  # the smaller intermediate goes through the second step
    if shrink_first:
        x = _resample_axis(x, outer, out_shape[0], nearest_axis == 0)
    x = _resample_plane(x, tuple(out_shape[1:]), nearest_axis)
    if not shrink_first:
        x = _resample_axis(x, outer, out_shape[0], nearest_axis == 0)
    return x


def class_uncertainty(rows: torch.Tensor, probabilities: bool = False) -> torch.Tensor:
    """How unsure the model is between its classes, per voxel of a slab of class scores (K, ...):
    (1 - the largest class probability) x K / (K - 1), in [0, 1]: 0 where one class takes all the
    probability, 1 where all K are equal. Ranks errors as 1 - max probability does (measured better
    than the entropy, docs/uncertainty.md). `rows` are logits (softmax taken here) or, with
    `probabilities`, probabilities (renormalised: interpolation keeps their sum only up to rounding).
    float32, the shape of rows[0]."""
    k = rows.shape[0]
    if k < 2:
        return torch.zeros(rows.shape[1:], dtype=torch.float32)
    # Running loops over the classes, as in argmax_classes: reductions over the outer class axis
    # (softmax(0), max(0)) are several times slower on the CPU and allocate K-sized temporaries.
    rows = rows.float()
    if probabilities:
        rows = rows.clamp(min=0)
    best = rows[0].clone()
    for c in range(1, k):
        torch.maximum(best, rows[c], out=best)
    total = torch.zeros_like(best)
    for c in range(k):
        total += rows[c] if probabilities else torch.exp(rows[c] - best)
    if probabilities:
        top = best / total.clamp_(min=1e-12)
    else:
        top = total.reciprocal_()  # softmax's largest value: exp(0) / sum exp(s_c - max)
    return top.neg_().add_(1.0).mul_(k / (k - 1)).clamp_(0.0, 1.0)


def argmax_classes(scores: torch.Tensor) -> torch.Tensor:
    """Index of the largest score over the class axis 0, the first one on ties (as torch.argmax).

    A running maximum over the classes: on the CPU, torch's argmax(0) reduces over the outermost,
    strided axis and is 3-8x slower (measured 0.72 s vs 0.09 s for 2 x 32 x 512 x 512 floats, one
    thread); it was most of the time of going back to the input grid.
    """
    best = scores[0].clone()
    index = torch.zeros(scores.shape[1:], dtype=torch.uint8 if scores.shape[0] <= 256 else torch.int32)
    for c in range(1, scores.shape[0]):
        index.masked_fill_(scores[c] > best, c)
        torch.maximum(best, scores[c], out=best)
    return index


def _rows_for_slab(src: torch.Tensor, n_in: int, n_out: int, start: int, stop: int, lo: int,
                   nearest: bool, dim: int = 1) -> torch.Tensor:
    """Output rows [start, stop) along `dim` of the interpolation from n_in to n_out rows, from
    the source rows [lo, lo + src.shape[dim]): each output row blends its two source rows with
    the whole axis's weights, so any split into slabs gives the same values."""
    if n_in == n_out:
        return src.narrow(dim, start - lo, stop - start)
    i0, i1, w = _axis_weights(n_in, n_out, nearest)
    i0, i1, w = i0[start:stop] - lo, i1[start:stop] - lo, w[start:stop]
    a = src.index_select(dim, i0)
    if nearest:
        return a
    b = src.index_select(dim, i1)
    shape = [1] * src.dim()
    shape[dim] = -1
    w = w.view(shape)
    return a.mul_(1 - w).add_(b.mul_(w))


# ---------------------------------------------------------------- the two directions
def plan_orientation(image: sitk.Image, plan: PreprocessingPlan) -> Tuple[Tuple[int, int, int], Tuple[bool, bool, bool]]:
    """Array permutation and flips the plan applies to this image (identity for "as-is")."""
    if plan.orientation == "LPS":
        return nearest_lps_axes(image.GetDirection())
    if plan.orientation == "RAS":
        return nearest_ras_axes(image.GetDirection())
    return (0, 1, 2), (False, False, False)


def oriented_spacing_of(image: sitk.Image, plan: PreprocessingPlan) -> Tuple[float, float, float]:
    """The image's spacing in the (z, y, x) order of the oriented array the network sees."""
    permutation, _ = plan_orientation(image, plan)
    zyx = tuple(reversed(image.GetSpacing()))
    return tuple(float(zyx[p]) for p in permutation)


def preprocess(images: Sequence[sitk.Image], plan: PreprocessingPlan,
               target_spacing: Optional[Sequence[float]] = None) -> Preprocessed:
    """Channels (all on one grid) -> network-grid float32 array + the record to invert it.

    `target_spacing` overrides the plan's (the --fast mode); None keeps the plan's.
    """
    if len(images) != len(plan.normalization):
        raise InputError(f"the model takes {len(plan.normalization)} channel(s), got {len(images)}")
    ref = images[0]
    input_shape = tuple(reversed(ref.GetSize()))
    permutation, flips = plan_orientation(ref, plan)
    oriented_spacing = oriented_spacing_of(ref, plan)

    data = np.stack([orient_array(sitk.GetArrayViewFromImage(im), permutation, flips) for im in images])
    bbox = nonzero_bbox(data) if plan.crop_to_nonzero else tuple((0, n) for n in data.shape[1:])
    data = np.ascontiguousarray(data[(slice(None),) + tuple(slice(a, b) for a, b in bbox)], dtype=np.float32)
    use_mask = plan.crop_to_nonzero if plan.use_mask_for_norm is None else plan.use_mask_for_norm
    mask = np.any(data != 0, axis=0) if use_mask else None
    normalize_first = plan.resampling is None or plan.resampling.normalize_first
    if normalize_first:
        for c, norm in enumerate(plan.normalization):
            normalize_channel(data[c], norm, mask)

    target = tuple(target_spacing) if target_spacing is not None else plan.target_spacing
    net_shape = network_shape_for(data.shape[1:], oriented_spacing, target)
    orders = plan.resampling.data if plan.resampling is not None else None  # None: our own bundles, linear
    nearest_axis = slice_axis_if_anisotropic(oriented_spacing, target, orders.force_separate_z if orders else None)
    if net_shape != data.shape[1:]:
        if orders is not None and orders.order == 3:
            data = resample_spline(data, net_shape, nearest_axis, orders.order, orders.order_z)
        else:
            data = resample(torch.from_numpy(data), net_shape, nearest_axis).numpy()
    if not normalize_first:  # nnU-Net v1: normalize on the network grid
        mask = None if mask is None else _nearest(mask, net_shape)
        for c, norm in enumerate(plan.normalization):
            normalize_channel(data[c], norm, mask)
    net_spacing = tuple(float(target[a]) if target else oriented_spacing[a] for a in range(3))
    record = GridRecord(input_shape, permutation, flips, oriented_spacing, bbox, net_spacing, net_shape, nearest_axis,
                        plan.resampling is not None and plan.resampling.softmax_first)
    log.debug("preprocessed %s -> %s (spacing %s -> %s)", input_shape, net_shape, oriented_spacing, net_spacing)
    return Preprocessed(np.ascontiguousarray(data), record)


def labels_to_network_grid(labels: sitk.Image, record: GridRecord) -> np.ndarray:
    """A label image on the input grid -> the network grid (nearest neighbour), e.g. training targets."""
    arr = orient_array(sitk.GetArrayViewFromImage(labels), record.permutation, record.flips)
    arr = arr[tuple(slice(a, b) for a, b in record.bbox)]
    return np.ascontiguousarray(_nearest(arr, record.network_shape))


def _nearest(arr: np.ndarray, shape: Shape) -> np.ndarray:
    idx = [_axis_weights(n_in, n_out, True)[0].numpy() for n_in, n_out in zip(arr.shape, shape)]
    return arr[np.ix_(*idx)]


def fast_spacing(plan: PreprocessingPlan, bundle_fast: Optional[Sequence[float]],
                 image_spacing: Sequence[float]) -> Tuple[float, float, float]:
    """Spacing of the --fast mode: the bundle's `inference.fast_spacing`, else twice the target
    spacing (or the image's, when the plan keeps it) on every axis except an anisotropic slice
    axis, which is already coarse."""
    if bundle_fast is not None:
        return tuple(float(s) for s in bundle_fast)
    base = plan.target_spacing if plan.target_spacing is not None else tuple(image_spacing)
    slice_axis = slice_axis_if_anisotropic(base, None)
    return tuple(float(s) if a == slice_axis else 2.0 * float(s) for a, s in enumerate(base))
