"""How long "Next unsure region" keeps the GUI thread: labelling a map on the 1 mm ICBM152 brain grid.

The map is built from the real tissue labels: 1 on each tissue boundary, blurred (sigma 1 voxel),
so its regions are the thin, many-branched shapes a segmentation's uncertainty has. Prints the
labelling time at three thresholds, one click's time, and the ratio to a plain `ndimage.label`
of the same mask (the baseline: what any connected-region search must pay).

    PYTHONPATH=core python3 Testing/benchmarks/bench_unsure_regions.py
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "MedNeXtV2Segment"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Testing/ for real_data
from MedNeXtV2SegmentLib.unsure_regions import UnsureRegionTour, find_regions  # noqa: E402
from real_data import data_dir  # noqa: E402

DATA = data_dir()  # MEDNEXTV2_DATA, ../shared/data, else the per-user cache (built once)


def best_of(fn, repeat=3):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    tissue = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "mr-brain-tissue" / "icbm152_2009a_tissue.nii.gz")))
    boundary = np.zeros(tissue.shape, dtype=np.float32)
    for axis in range(3):
        edge = np.diff(tissue, axis=axis) != 0
        index = [slice(None)] * 3
        index[axis] = slice(1, None)
        boundary[tuple(index)] += edge
    values = np.clip(ndimage.gaussian_filter(boundary, 1.0) * 2.0, 0.0, 1.0).astype(np.float32)
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    print(f"grid {values.shape[::-1]} ({values.size / 1e6:.1f} M voxels), load {os.getloadavg()[0]:.2f}")
    for threshold in (0.3, 0.5, 0.7):
        regions, _ = find_regions(values, ijk_to_ras, threshold)
        ours = best_of(lambda: find_regions(values, ijk_to_ras, threshold))
        base = best_of(lambda: ndimage.label(values > threshold))
        print(f"threshold {threshold}: {len(regions)} regions, largest {regions[0].voxels if regions else 0} voxels; "
              f"find_regions {ours * 1000:.0f} ms, ndimage.label alone {base * 1000:.0f} ms, ratio {ours / base:.2f}")
    tour = UnsureRegionTour(values, ijk_to_ras)
    clicks = []
    for _ in range(len(tour.regions)):
        start = time.perf_counter()
        tour.next()
        clicks.append(time.perf_counter() - start)
    print(f"{len(clicks)} clicks (a region whose centroid is outside it costs one scan): "
          f"slowest {max(clicks) * 1000:.1f} ms, median {sorted(clicks)[len(clicks) // 2] * 1000:.2f} ms")


if __name__ == "__main__":
    main()
