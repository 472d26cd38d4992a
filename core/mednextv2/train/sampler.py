"""Random patches from the cached cases, a third of each batch centred on foreground (nnU-Net's rule).

Patches are cut a little larger than the network patch (`context`), so that rotation and scaling
on the device (augment.py) find real voxels near the corners instead of padding. A background
thread keeps a few batches ready: numpy slicing of memory-mapped arrays releases the GIL.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from mednextv2.train.preprocessed import CachedCase

FOREGROUND_FRACTION = 1.0 / 3.0
CONTEXT_FACTOR = 1.25  # context side / patch side


def context_size(patch: Sequence[int], factor: float = CONTEXT_FACTOR) -> Tuple[int, int, int]:
    """Patch side grown by `factor`, keeping (context - patch) even so the identity transform is an exact crop."""
    out = []
    for p in patch:
        c = int(np.ceil(p * factor))
        out.append(c + (c - p) % 2)
    return tuple(out)


@dataclass(frozen=True)
class Batch:
    image: np.ndarray  # (B, C, *context) float32 (a pinned torch tensor when the Prefetcher pins)
    label: np.ndarray  # (B, 1, *context) uint8 head rows


class PatchSampler:
    def __init__(self, cases: Sequence[CachedCase], patch: Sequence[int], batch_size: int, seed: int,
                 foreground_fraction: float = FOREGROUND_FRACTION, context_factor: float = CONTEXT_FACTOR) -> None:
        self.cases = list(cases)
        self.patch = tuple(int(p) for p in patch)
        self.context = context_size(self.patch, context_factor)
        self.batch_size = int(batch_size)
        self.foreground_fraction = foreground_fraction
        self.rng = np.random.default_rng(seed)
        self._arrays = [(c.image(), c.label(), c.foreground()) for c in self.cases]

    def _n_forced(self) -> int:
        # Expected forced fraction is exactly foreground_fraction, also for batch sizes 1 and 2.
        want = self.batch_size * self.foreground_fraction
        return int(want) + int(self.rng.random() < want - int(want))

    def _center(self, index: int, forced: bool) -> np.ndarray:
        """Patch centre anywhere in the image, so that voxels at the border are seen as often as the
        rest (with a crop to the non-zero box, the border is where the cortex or the skin is);
        a forced one within a quarter patch of a voxel of a present class."""
        fg = self._arrays[index][2]
        if forced and len(fg):
            classes = np.unique(fg[:, 0])
            cls = self.rng.choice(classes)  # each present class equally often, so small ones are seen
            rows = fg[fg[:, 0] == cls]
            center = rows[self.rng.integers(len(rows)), 1:].astype(np.int64)
            jitter = (self.rng.random(3) - 0.5) * np.array(self.patch) / 2
            return center + np.round(jitter).astype(np.int64)
        return np.array([self.rng.integers(0, s) for s in self.cases[index].shape])

    def _crop(self, index: int, center: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        image, label, _ = self._arrays[index]
        ctx = np.array(self.context)
        start = center - ctx // 2
        stop = start + ctx
        src = tuple(slice(max(a, 0), min(b, s)) for a, b, s in zip(start, stop, label.shape))
        dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, start))
        out_image = np.zeros((image.shape[0], *self.context), dtype=np.float32)
        out_label = np.zeros(self.context, dtype=np.uint8)
        out_image[(slice(None),) + dst] = image[(slice(None),) + src]
        out_label[dst] = label[src]
        return out_image, out_label

    def sample(self) -> Batch:
        n_forced = self._n_forced()
        images, labels = [], []
        for b in range(self.batch_size):
            index = int(self.rng.integers(len(self.cases)))
            image, label = self._crop(index, self._center(index, forced=b < n_forced))
            images.append(image)
            labels.append(label[None])
        return Batch(np.stack(images), np.stack(labels))


class Prefetcher:
    """Runs `sampler.sample()` on a daemon thread, `depth` batches ahead."""

    def __init__(self, sampler: PatchSampler, depth: int = 3, pin_memory: bool = False) -> None:
        self.sampler = sampler
        self.pin_memory = pin_memory  # CUDA: page-locked batches make the host->device copy asynchronous
        self.queue: "queue.Queue" = queue.Queue(maxsize=depth)
        self.stopped = threading.Event()
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="patch-sampler", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopped.is_set():
                batch = self.sampler.sample()
                if self.pin_memory:
                    batch = Batch(torch.from_numpy(batch.image).pin_memory(), torch.from_numpy(batch.label).pin_memory())
                while not self.stopped.is_set():
                    try:
                        self.queue.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # handed to the training thread, which re-raises it
            self.error = e
            self.stopped.set()

    def next(self) -> Batch:
        while True:
            if self.error is not None:
                raise RuntimeError(f"patch sampling failed: {self.error}") from self.error
            try:
                return self.queue.get(timeout=0.1)
            except queue.Empty:
                continue

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)

