"""How long a CPU run will take, from this computer's own measurement, when the catalog has no timing.

Neither bundles nor (today) the catalog entries carry timings, so no number is invented: the
estimate is (tiles of this input) x (network passes per tile) x (seconds per pass measured on
this computer by an earlier CPU run of the same model). The engine reports every batch of
sliding-window tiles (`tiles_done`, `tiles_total`, `elapsed_s` since the first tile), so the seconds
per pass of a run are `elapsed_s / tiles_done / passes`, also when one batch held every tile. The tile count uses the engine's tile
placement (mednextv2.inference.tiles) on the input resampled to the model's spacing; passes are folds x
mirrored TTA passes.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from .progress import ProgressEvent

RATE_KEY = "MedNeXtV2/Segment/cpuSecondsPerPass/"  # + model id, in QSettings


def passes_per_tile(fold_mirror_axes: Sequence[Sequence[int]], tta: bool) -> int:
    """Network calls per tile: each fold (given by its mirror axes, `InferenceDefaults.mirror_axes_per_fold`),
    times its mirrored copies when TTA is on (as the engine)."""
    return max(1, sum(2 ** len(axes) if tta else 1 for axes in fold_mirror_axes))


def tile_count(size_ijk: Sequence[int], spacing_ijk: Sequence[float], target_spacing_zyx: Optional[Sequence[float]],
               patch_zyx: Sequence[int], step: float) -> int:
    """Tiles of a volume (voxels and spacing in i, j, k) once resampled to the model's spacing
    (None: the model keeps the input's spacing)."""
    from mednextv2.inference.tiles import tile_grid

    extent_zyx = [n * s for n, s in zip(reversed(list(size_ijk)), reversed(list(spacing_ijk)))]
    if target_spacing_zyx is None:
        target_spacing_zyx = list(reversed(list(spacing_ijk)))
    shape = [max(p, int(math.ceil(e / t))) for e, t, p in zip(extent_zyx, target_spacing_zyx, patch_zyx)]
    return len(tile_grid(shape, patch_zyx, step))


def seconds_per_pass(event: ProgressEvent, passes: int) -> Optional[float]:
    """The engine's own measurement, from a sliding-window progress line; None if it has none."""
    done, elapsed = event.extra.get("tiles_done"), event.extra.get("elapsed_s")
    if event.stage != "predict" or not isinstance(done, int) or not isinstance(elapsed, (int, float)):
        return None
    if done < 1 or passes < 1 or elapsed <= 0:
        return None
    return elapsed / done / passes


def cpu_estimate_text(tiles: int, passes: int, rate_s: Optional[float]) -> str:
    """The hint shown before a CPU run; says how the number was made, or that there is none yet."""
    from .progress import format_duration

    if rate_s is None:
        return (f"No CUDA GPU found: this runs on the CPU ({tiles} tiles x {passes} network passes); the "
                "time is measured during the first CPU run of this model and estimated from then on.")
    return (f"No CUDA GPU found: expect about {format_duration(tiles * passes * rate_s)} on the CPU "
            f"(estimated: {tiles} tiles x {passes} passes x {rate_s:.2g} s per pass, measured on this "
            "computer in an earlier run of this model).")
