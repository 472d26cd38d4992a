"""Gaussian-weighted sliding-window prediction over a whole volume, on CUDA, MPS or the CPU.

Works with any module that takes (N, C, z, y, x) and returns logits (or a list whose first item
is the full-resolution logits). Each fold's mirrored passes (its own mirror axes) are averaged,
then the folds, in logit space (as nnU-Net), and the Gaussian-weighted mean logits are returned.

Memory bound of the accumulation: the Gaussian-weighted mean of the class logits so far is kept
in float16 and the weight sum in float32, (2 * K + 4) bytes per voxel (K classes) of the stitching
window, plus the padded input (4 * C bytes per voxel). With a sink (`predict(data, sink)`, e.g.
finishing.LabelFinisher) tiles run in order along one axis (tiles.stream_axis: the one whose patch
covers the smallest part of the grid) and the window holds only the `patch` rows along it that the
current tiles touch: rows behind them are final and go to the sink at once. Without a sink, or
when every axis has one tile, the window is the whole padded grid. Nothing else scales with the
volume: tiles go through the network `tile_batch` at a time. Each voxel receives the same tiles in
the same order either way, so the streamed result equals the whole-volume one bit for bit.

Small tiles are batched: one forward takes several tiles and their mirrored copies, up to
FORWARD_VOXELS voxels (GroupNorm and GRN are per sample, so a sample's result does not depend
on its batch). A 32^3 tile costs the network mostly per-operation overhead, which a batch pays once.

On out-of-memory the case restarts with the next fallback, each step logged:
halve the tile batch (down to 1) -> one mirrored pass per forward -> accumulate on the CPU -> run
on the CPU.
"""
from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np
import torch

from mednextv2.devices import autocast_dtype, resolve_device
from mednextv2.errors import ResourceError
from mednextv2.inference.tiles import stream_axis, tile_grid, tile_starts  # noqa: F401  (tile_starts: re-exported)
from mednextv2.threads import ThreadPolicy

log = logging.getLogger(__name__)

Progress = Callable[..., None]
GAUSSIAN_SIGMA_SCALE = 1.0 / 8  # nnU-Net's sigma = patch / 8
GAUSSIAN_FLOOR = 1e-3
DEFAULT_TILE_BATCH = {"cuda": 4, "mps": 2}  # the CPU's follows from FORWARD_VOXELS (cpu_tile_batch)
# Voxels per forward that small tiles (and their mirrored copies) are batched up to. On the CPU a
# v2-tiny 32^3 tile cost 1.4x as much CPU time alone as in a batch of 16 (8: 1.35x, 32: 1.4x) since
# a batch's small samples share each op of the network's fast path; a 64^3 tile costs about the
# same per voxel alone or batched (Testing/benchmarks/bench_segment_small_patch.py --sweep).
FORWARD_VOXELS = 16 * 32 ** 3


# ---------------------------------------------------------------- the tile plan's memory, checked
TILE_BYTES = 72  # one (z, y, x) tuple in the tile list: a 3-tuple (64) and its list slot (8)


@dataclass(frozen=True)
class TilePlan:
    """What a case will cost before a tile is run: tiles per axis and the host memory they need."""

    shape: Tuple[int, ...]  # padded network grid (z, y, x)
    tiles_per_axis: Tuple[int, ...]
    host_bytes: int  # the tile list and the stitching buffers or result that live on the host

    @property
    def n_tiles(self) -> int:
        return int(np.prod(self.tiles_per_axis))


def plan_tiles(shape: Sequence[int], patch: Sequence[int], step: float, n_classes: int,
               buffers_on_host: bool, streamed: bool = False) -> TilePlan:
    """The plan for a padded input already in memory: the stitching buffers (module docstring) on
    the host, or only the float16 scores copied back to it; `streamed`: the window a sink allows."""
    counts = tuple(len(tile_starts(s, p, step)) for s, p in zip(shape, patch))
    voxels = stitching_voxels(shape, patch, step) if streamed else int(np.prod(shape))
    buffers = (2 * n_classes + 4 if buffers_on_host else 2 * n_classes) * voxels
    return TilePlan(tuple(int(s) for s in shape), counts, TILE_BYTES * int(np.prod(counts)) + buffers)


def stitching_voxels(shape: Sequence[int], patch: Sequence[int], step: float) -> int:
    """Voxels of the streamed stitching window: `patch` rows along the stream axis, else the grid."""
    axis = stream_axis(shape, patch, step)
    rows = list(shape)
    if axis is not None:
        rows[axis] = patch[axis]
    return int(np.prod(rows))


def available_ram_bytes() -> Optional[int]:
    """Memory this process may still take: the least of the free RAM, the cgroup limit and the
    address-space limit (ulimit -v); None where the platform tells none of them."""
    found = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
                found.append(int(limit) - int(f.read().strip()))
    except (OSError, ValueError):
        pass
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/status", encoding="ascii") as f:
                used = [int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:")]
            found.append(soft - (used[0] if used else 0))
    except (ImportError, OSError, ValueError):
        pass
    return max(0, min(found)) if found else None


def check_tile_plan(plan: TilePlan, patch: Sequence[int], step: float) -> None:
    """ResourceError, before any tile runs, when the plan cannot fit in the memory left."""
    free = available_ram_bytes()
    if free is not None and plan.host_bytes > free:
        raise ResourceError(
            f"the tile plan needs {plan.host_bytes / 2**30:.2f} GiB of RAM ({plan.n_tiles:,} tiles of "
            f"{'x'.join(map(str, patch))} at step {step:g} over a {'x'.join(map(str, plan.shape))} network grid) "
            f"but {free / 2**30:.2f} GiB is available; use --fast (a coarser grid), a larger --step, or free memory")


@lru_cache(maxsize=8)
def gaussian_importance(patch: Tuple[int, int, int], sigma_scale: float = GAUSSIAN_SIGMA_SCALE,
                        kind: str = "mednextv2") -> torch.Tensor:
    """Gaussian weight map: ours ("mednextv2"), or nnU-Net's ("nnunet", for imported nnU-Net models)."""
    if kind == "nnunet":
        return _nnunet_importance(patch, sigma_scale)
    if kind != "mednextv2":
        raise ValueError(f"unknown importance map {kind!r}")
    # Ours: centred between the two middle voxels (symmetric), max 1, floored at GAUSSIAN_FLOOR.
    axes = []
    for p in patch:
        c = (p - 1) / 2.0
        x = torch.arange(p, dtype=torch.float64)
        axes.append(torch.exp(-0.5 * ((x - c) / (p * sigma_scale)) ** 2))
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    # Floor at 1e-3: corner weights of ~1e-10 underflow in the float16 accumulator (smallest
    # subnormal 6e-8) while the float32 weight sum keeps them, which would zero corner voxels.
    return (g / g.max()).clamp_(min=GAUSSIAN_FLOOR).float()


def _nnunet_importance(patch: Tuple[int, int, int], sigma_scale: float) -> torch.Tensor:
    """nnU-Net v2's map (sliding_window_prediction.compute_gaussian), value for value: scipy's
    gaussian_filter of a delta at p//2 (mode constant) is the truncated kernel (radius
    int(4 sigma + 0.5)) around p//2, zero beyond; scaled to max 10, stored as float16, zeros
    replaced by the smallest non-zero value. Its own near-ties are decided by this map, so an
    imported model must stitch with it to give nnU-Net's labels (docs/benchmarks.md)."""
    axes = []
    for p in patch:
        sigma = p * sigma_scale
        radius = int(4.0 * sigma + 0.5)  # scipy.ndimage's default truncate=4.0
        d = torch.arange(p, dtype=torch.float64) - p // 2
        axes.append(torch.where(d.abs() <= radius, torch.exp(-0.5 * (d / sigma) ** 2), torch.zeros_like(d)))
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    g = (g * (10.0 / g.max())).half()
    g[g == 0] = g[g != 0].min()
    return g.float()


def cpu_tile_batch(patch: Sequence[int], passes: int) -> int:
    """Tiles per forward on the CPU: as many as fit FORWARD_VOXELS with all their mirrored passes."""
    return max(1, FORWARD_VOXELS // (int(np.prod(patch)) * max(1, passes)))


def pad_to_patch(data: torch.Tensor, patch: Sequence[int]) -> Tuple[torch.Tensor, Tuple[slice, ...]]:
    """Zero-pad (C, z, y, x) symmetrically to at least the patch size; the slices undo it."""
    pads, crop = [], []
    for size, p in zip(data.shape[1:], patch):
        total = max(0, p - size)
        before = total // 2
        pads.append((before, total - before))
        crop.append(slice(before, before + size))
    if not any(a or b for a, b in pads):
        return data, tuple(crop)
    flat = [v for a, b in reversed(pads) for v in (a, b)]  # F.pad wants the last axis first
    return torch.nn.functional.pad(data, flat), tuple(crop)


def mirror_combinations(mirror_axes: Sequence[int]) -> List[Tuple[int, ...]]:
    """All subsets of the mirror axes (spatial, 0..2), the empty one first."""
    axes = sorted(set(int(a) for a in mirror_axes))
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def _mirrors_per_model(mirror_axes: Union[Sequence[int], Sequence[Sequence[int]]],
                       n_models: int) -> List[List[Tuple[int, ...]]]:
    """Each model's mirror combinations: one axes list for all models, or one list per model."""
    per_model = [a for a in mirror_axes if not isinstance(a, (int, np.integer))]
    if not per_model:
        return [mirror_combinations(mirror_axes)] * n_models
    if len(per_model) != len(mirror_axes) or len(per_model) != n_models:
        raise ValueError(f"mirror_axes: give one axes list for all models or one per model ({n_models}), got {mirror_axes!r}")
    return [mirror_combinations(a) for a in per_model]


# ---------------------------------------------------------------- out of memory
_OOM_MESSAGES = ("out of memory", "not enough memory", "can't allocate memory")  # CUDA, MPS, CPU allocators


def is_out_of_memory(e: BaseException) -> bool:
    if isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(e, RuntimeError) and any(m in str(e).lower() for m in _OOM_MESSAGES)


# ---------------------------------------------------------------- fallback chain
@dataclass(frozen=True)
class RunState:
    compute: torch.device
    accumulate: torch.device
    tile_batch: int
    batch_mirrors: bool = True  # a tile's mirrored passes share forwards (up to FORWARD_VOXELS)


def next_fallback(state: RunState) -> Optional[RunState]:
    """The next, cheaper way to run after an out-of-memory error, or None when none is left."""
    if state.tile_batch > 1:
        return replace(state, tile_batch=max(1, state.tile_batch // 2))
    if state.batch_mirrors:
        return replace(state, batch_mirrors=False)
    if state.accumulate.type != "cpu":
        return replace(state, accumulate=torch.device("cpu"))
    if state.compute.type != "cpu":
        return replace(state, compute=torch.device("cpu"))
    return None


def _describe_fallback(old: RunState, new: RunState) -> str:
    if new.tile_batch != old.tile_batch:
        return f"halving the tile batch {old.tile_batch} -> {new.tile_batch}"
    if new.batch_mirrors != old.batch_mirrors:
        return "one mirrored pass per forward"
    if new.accumulate != old.accumulate:
        return "accumulating the prediction on the CPU"
    return "running on the CPU"


# ---------------------------------------------------------------- the predictor
class ScoreSink(Protocol):
    """Takes final mean logits in runs of rows along one axis (finishing.LabelFinisher)."""

    def begin(self, axis: int) -> None: ...

    def add(self, start: int, scores: torch.Tensor) -> None: ...


class _StitchWindow:
    """The running weighted mean (float16) and weight sums (float32) of the padded grid's rows
    [base, base + rows) along `axis`; rows behind the tiles are handed over and the window moves on."""

    def __init__(self, n_classes: int, shape: Sequence[int], axis: int, rows: int, device: torch.device) -> None:
        window = list(shape)
        window[axis] = rows
        self.axis, self.base, self.rows = axis, 0, rows
        self.mean = torch.zeros([n_classes] + window, dtype=torch.float16, device=device)
        self.weight = torch.zeros(window, dtype=torch.float32, device=device)

    def local(self, window: Tuple[slice, ...]) -> Tuple[slice, ...]:
        """A tile's slices of the padded grid -> slices of the window."""
        w = list(window)
        w[self.axis] = slice(w[self.axis].start - self.base, w[self.axis].stop - self.base)
        return tuple(w)

    def finished(self, stop: int) -> torch.Tensor:
        """The mean of rows [base, stop), final once no later tile touches them (a view)."""
        return self.mean.narrow(1 + self.axis, 0, stop - self.base)

    def move_to(self, base: int) -> None:
        """Drop the rows before `base` (handed over); the kept rows move to the window's start."""
        n = base - self.base
        for t, dim in ((self.mean, 1 + self.axis), (self.weight, self.axis)):
            keep = self.rows - n
            for first in range(0, keep, n):  # runs of n rows: source and destination never overlap
                m = min(n, keep - first)
                t.narrow(dim, first, m).copy_(t.narrow(dim, first + n, m))
            t.narrow(dim, max(0, keep), min(n, self.rows)).zero_()
        self.base = base


class SlidingWindowPredictor:
    """Predict class scores (mean logits) for a whole preprocessed volume, tile by tile."""

    def __init__(self, models: Sequence[torch.nn.Module], n_classes: int, patch_size: Sequence[int],
                 step: float = 0.5, mirror_axes: Union[Sequence[int], Sequence[Sequence[int]]] = (),
                 device: Union[str, torch.device] = "auto",
                 tile_batch: Optional[int] = None, amp: bool = True, progress: Optional[Progress] = None,
                 threads: Optional[int] = None, importance_map: str = "mednextv2") -> None:
        if not models:
            raise ValueError("at least one model is needed")
        self.models = list(models)
        self.n_classes = int(n_classes)
        self.patch = tuple(int(p) for p in patch_size)
        self.step = float(step)
        self.mirrors = _mirrors_per_model(mirror_axes, len(self.models))
        self.device = resolve_device(device)
        passes = max(map(len, self.mirrors)) if self.mirrors else 1
        self.tile_batch = int(tile_batch or DEFAULT_TILE_BATCH.get(self.device.type)
                              or cpu_tile_batch(self.patch, passes))
        self.amp = amp
        self.progress = progress
        self.threads = ThreadPolicy(threads)  # CPU only: torch's thread count follows the free cores
        self.importance_map = importance_map

    def predict(self, data: Union[np.ndarray, torch.Tensor],
                sink: Optional[ScoreSink] = None) -> Optional[torch.Tensor]:
        """(C, z, y, x) float input -> (K, z, y, x) float16 Gaussian-weighted mean logits on the CPU;
        with a `sink`, the rows go to it as they are finished (module docstring) and None is returned."""
        data = torch.as_tensor(data, dtype=torch.float32)
        if data.dim() != 4:
            raise ValueError(f"expected (C, z, y, x) input, got shape {tuple(data.shape)}")
        state = RunState(self.device, self._initial_accumulation_device(data, sink is not None), self.tile_batch)
        while True:
            try:
                with self.threads.applied():
                    return self._run(data, state, sink)
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                new = next_fallback(state)
                if new is None:
                    raise ResourceError(f"out of memory even on the CPU with one tile at a time "
                                        f"({str(e).strip() or type(e).__name__}); "
                                        "use --fast, a smaller model, or free memory") from e
                log.warning("out of memory on %s (%s); retrying the case %s", state.compute,
                            (str(e).strip() or type(e).__name__).splitlines()[0][:120], _describe_fallback(state, new))
                _free_cuda_cache()
                state = new

    def order_axis(self, shape: Sequence[int]) -> int:
        """The axis tiles run along for a (C, z, y, x) input's spatial `shape` (0 when each axis has
        one tile): a sink gets its rows along it, and whole-volume scores are finished along it to
        give the same labels (preprocessing.to_input_grid's `axis`)."""
        padded = [max(int(n), p) for n, p in zip(shape, self.patch)]
        axis = stream_axis(padded, self.patch, self.step)
        return 0 if axis is None else axis

    def _initial_accumulation_device(self, data: torch.Tensor, streamed: bool = False) -> torch.device:
        if self.device.type != "cuda":
            return torch.device("cpu") if self.device.type == "mps" else self.device
        shape = [max(s, p) for s, p in zip(data.shape[1:], self.patch)]
        window = stitching_voxels(shape, self.patch, self.step) if streamed else int(np.prod(shape))
        need = (2 * self.n_classes + 4) * window + 4 * data.shape[0] * int(np.prod(shape))
        free, _ = torch.cuda.mem_get_info(self.device)
        if need > free // 2:
            log.info("accumulating on the CPU: %.1f GiB needed, %.1f GiB free on the GPU", need / 2**30, free / 2**30)
            return torch.device("cpu")
        return self.device

    @torch.no_grad()
    def _run(self, data: torch.Tensor, state: RunState, sink: Optional[ScoreSink] = None) -> Optional[torch.Tensor]:
        padded, crop = pad_to_patch(data, self.patch)
        shape = tuple(padded.shape[1:])
        axis = self.order_axis(shape)
        streamed = sink is not None and stream_axis(shape, self.patch, self.step) is not None
        plan = plan_tiles(shape, self.patch, self.step, self.n_classes, state.accumulate.type == "cpu", streamed)
        check_tile_plan(plan, self.patch, self.step)
        log.info("tile plan: %d tiles (%s) at step %g, %d pass(es) each%s", plan.n_tiles,
                 " x ".join(map(str, plan.tiles_per_axis)), self.step, sum(map(len, self.mirrors)),
                 f", streamed along axis {axis}" if streamed else "")
        tiles = tile_grid(shape, self.patch, self.step, major=axis)
        gauss = gaussian_importance(self.patch, kind=self.importance_map)
        # The weighted mean so far (float16) and the weights so far (float32), not a weighted sum:
        # logit * weight is a float16 subnormal where nnU-Net's weights are tiny (down to 1e-10 at
        # a tile's corners), and a voxel that no other tile covers kept a few bits of its logit.
        stitch = _StitchWindow(self.n_classes, shape, axis, self.patch[axis] if streamed else shape[axis],
                               state.accumulate)
        mean, weight = stitch.mean, stitch.weight
        if sink is not None:
            sink.begin(axis)
        gauss_acc = gauss.to(state.accumulate)
        for model in self.models:
            model.to(state.compute)
        padded = padded.to(state.compute)
        started = time.monotonic()
        for first in range(0, len(tiles), state.tile_batch):
            batch = tiles[first:first + state.tile_batch]
            windows = [tuple(slice(s, s + p) for s, p in zip(corner, self.patch)) for corner in batch]
            x = torch.stack([padded[(slice(None),) + w] for w in windows])
            if state.compute.type == "cpu":
                self.threads.update()
            logits = self._predict_tiles(x, state.compute, state.batch_mirrors).to(state.accumulate)
            for i, (corner, w) in enumerate(zip(batch, windows)):
                if streamed and corner[axis] > stitch.base:  # no later tile touches the rows before it
                    self._hand_over(sink, stitch, corner[axis], crop)
                    stitch.move_to(corner[axis])
                w = stitch.local(w)
                window = mean[(slice(None),) + w]
                share = gauss_acc / weight[w].add_(gauss_acc)  # this tile's part of the weights so far
                # mean += (logits - mean) * share, class by class, float32 -> float16 inside the add:
                # on the CPU a mixed-dtype add over the whole 4-D window is ~6x slower (measured
                # 178 vs 28 ms, 44 classes).
                for c in range(self.n_classes):
                    window[c].add_(logits[i, c].sub_(window[c]).mul_(share))
            del logits, x  # not alive beside the next forward's (K classes x tile_batch x patch float32)
            self._report(first + len(batch), len(tiles), started)
        if sink is not None:
            self._hand_over(sink, stitch, stitch.base + stitch.rows, crop)
            return None
        # On the CPU the result is a view of the accumulator; from a GPU it streams to the CPU in
        # slabs, so no second full-size copy exists on the device.
        mean = mean[(slice(None),) + crop]
        if mean.device.type == "cpu":
            return mean
        out = torch.empty(mean.shape, dtype=torch.float16)
        for z in range(0, mean.shape[1], 8):
            out[:, z:z + 8] = mean[:, z:z + 8].cpu()
        return out

    @staticmethod
    def _hand_over(sink: ScoreSink, stitch: _StitchWindow, stop: int, crop: Tuple[slice, ...]) -> None:
        """Give the sink the window's rows [base, stop) of the padded grid that lie inside the crop
        (the network grid), on the CPU (from a GPU in runs of 8 rows)."""
        axis = stitch.axis
        lo, hi = max(stitch.base, crop[axis].start), min(stop, crop[axis].stop)
        if hi <= lo:
            return
        rows = stitch.finished(stop)
        region = [slice(None)] + list(crop)
        region[1 + axis] = slice(lo - stitch.base, hi - stitch.base)
        rows = rows[tuple(region)]
        start = lo - crop[axis].start
        if rows.device.type == "cpu":
            sink.add(start, rows)
            return
        for first in range(0, hi - lo, 8):
            sink.add(start + first, rows.narrow(1 + axis, first, min(8, hi - lo - first)).cpu())

    def _passes(self, model: torch.nn.Module, x: torch.Tensor, mirrors: Sequence[Tuple[int, ...]],
                device: torch.device, batch_mirrors: bool):
        """Each mirrored pass's logits over the tiles x, un-mirrored, (B, K, *patch) float32, in
        the order of `mirrors`; as many passes per forward as FORWARD_VOXELS allows."""
        dtype = autocast_dtype(device) if self.amp else None
        n = x.shape[0]
        per_forward = max(1, FORWARD_VOXELS // (x[0, 0].numel() * n)) if batch_mirrors else 1
        for first in range(0, len(mirrors), per_forward):
            group = [tuple(a + 2 for a in axes) for axes in mirrors[first:first + per_forward]]
            flipped = [torch.flip(x, dims) if dims else x for dims in group]
            inp = flipped[0] if len(flipped) == 1 else torch.cat(flipped)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out = model(inp)
            if isinstance(out, (list, tuple)):
                out = out[0]
            out = out.float()
            for i, dims in enumerate(group):
                part = out[i * n:(i + 1) * n]
                yield torch.flip(part, dims) if dims else part

    def _predict_tiles(self, x: torch.Tensor, device: torch.device, batch_mirrors: bool = True) -> torch.Tensor:
        """Mean logits over folds of each fold's mean over its mirrored passes, (B, K, *patch) float32.

        Logits, not probabilities, are averaged, stitched and later interpolated, as nnU-Net
        does, so both give the same labels for the same network and preprocessing.
        """
        # Folds with as many passes each give every pass the same weight: one total, divided once
        # (one rounding, one pass over the scores). Otherwise each fold's mean is taken first, so
        # a fold with more mirrored passes does not outweigh the others.
        same_count = len(set(map(len, self.mirrors))) == 1
        total = None
        for model, mirrors in zip(self.models, self.mirrors):
            fold = total if same_count else None
            for out in self._passes(model, x, mirrors, device, batch_mirrors):
                fold = out if fold is None else fold.add_(out)
            if same_count:
                total = fold
            else:
                fold.div_(len(mirrors))
                total = fold if total is None else total.add_(fold)
        passes = len(self.models) * (len(self.mirrors[0]) if same_count else 1)
        return total.div_(passes) if passes > 1 else total

    def _report(self, done: int, total: int, started: float) -> None:
        if self.progress is None:
            return
        elapsed = time.monotonic() - started
        eta = elapsed / done * (total - done) if done else None
        self.progress("predict", done / total, f"tile {done}/{total}", eta_s=eta, tiles_done=done, tiles_total=total,
                      elapsed_s=round(elapsed, 3))


def _free_cuda_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
