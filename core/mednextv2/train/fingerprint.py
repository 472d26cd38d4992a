"""Dataset fingerprint: spacings, sizes, and foreground intensity statistics per channel.

The statistics drive the CT normalization (nnU-Net: clip to the foreground's 0.5/99.5
percentiles, then z-score with the foreground mean and std) and the modality guess.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
import SimpleITK as sitk

from mednextv2.inference.image_io import read_image
from mednextv2.inference.preprocessing import nearest_lps_axes, nonzero_bbox, orient_array
from mednextv2.train.checks import ValidatedDataset

log = logging.getLogger(__name__)

SAMPLES_PER_CASE = 10_000  # foreground voxels per case for the intensity statistics


@dataclass(frozen=True)
class ChannelStats:
    mean: float
    std: float
    p00_5: float
    p99_5: float
    minimum: float


@dataclass(frozen=True)
class Fingerprint:
    # per case, in the LPS-ordered array axes (z, y, x) the network sees (see preprocessing.py)
    spacings: Tuple[Tuple[float, float, float], ...]  # mm
    sizes: Tuple[Tuple[int, int, int], ...]  # voxels
    nonzero_sizes: Tuple[Tuple[int, int, int], ...]  # per case, size of the box around non-zero voxels
    channels: Tuple[ChannelStats, ...]

    def to_dict(self) -> Dict:
        return {"spacings": self.spacings, "sizes": self.sizes, "nonzero_sizes": self.nonzero_sizes,
                "channels": [vars(c) for c in self.channels]}


def make_fingerprint(data: ValidatedDataset, seed: int = 0) -> Fingerprint:
    rng = np.random.default_rng(seed)
    samples = [[] for _ in range(data.n_channels)]
    minima = [np.inf] * data.n_channels
    nonzero_sizes, sizes, spacings = [], [], []
    for case in data.dataset.cases:
        itk_images = [read_image(p) for p in case.images]
        permutation, flips = nearest_lps_axes(itk_images[0].GetDirection())
        images = [orient_array(sitk.GetArrayViewFromImage(im), permutation, flips).astype(np.float32) for im in itk_images]
        # A copy: a view of a temporary image outlives its pixels (a crash seen in the test suite).
        label = orient_array(sitk.GetArrayFromImage(read_image(case.label, allow_constant=True)), permutation, flips)
        raw_spacing = tuple(reversed(itk_images[0].GetSpacing()))
        spacings.append(tuple(float(raw_spacing[p]) for p in permutation))
        sizes.append(tuple(int(s) for s in images[0].shape))
        nonzero_sizes.append(tuple(b - a for a, b in nonzero_bbox(np.stack(images))))
        foreground = np.flatnonzero(label.ravel() > 0)
        pick = rng.choice(foreground, min(SAMPLES_PER_CASE, len(foreground)), replace=False) if len(foreground) else foreground
        for c, image in enumerate(images):
            samples[c].append(image.ravel()[pick])
            minima[c] = min(minima[c], float(image.min()))
    stats = []
    for c in range(data.n_channels):
        values = np.concatenate(samples[c]) if samples[c] else np.zeros(1, np.float32)
        stats.append(ChannelStats(mean=float(values.mean()), std=float(values.std()),
                                  p00_5=float(np.percentile(values, 0.5)), p99_5=float(np.percentile(values, 99.5)),
                                  minimum=minima[c]))
    return Fingerprint(spacings=tuple(spacings), sizes=tuple(sizes), nonzero_sizes=tuple(nonzero_sizes), channels=tuple(stats))
