"""Peak memory of stitching + going back to the input grid with many classes: ours vs the naive way.

Same synthetic CT, same stand-in network (a 1x1x1 conv to K classes, so the network itself costs
nothing and only the stitching/export memory is measured), same tiles, same step:
- ours: float16 probability accumulation on the network grid, then slab-wise resampling and
  argmax back onto the input grid (mednextv2.inference.preprocessing.to_input_grid);
- naive: float32 logit accumulation, then all K class maps resampled to the input grid at once
  and the argmax taken there (what nnU-Net's default export does, the step users report at
  tens of GB).
The default volume is 256x256x150 so the naive run fits a small machine (its full-resolution
class maps alone take 4 * K * voxels bytes: 1.7 GB here, 13.8 GB at 512x512x300).
Each runs in its own child process (fresh peak RSS); the ratio is printed side by side, and the
labels of both are compared.

    python Testing/benchmarks/bench_segment_memory.py [--classes 44] [--size 150 256 256] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from mednextv2.bundle import Normalization, PreprocessingPlan
from mednextv2.inference.preprocessing import preprocess, to_input_grid
from mednextv2.inference.sliding_window import SlidingWindowPredictor, gaussian_importance, pad_to_patch, tile_grid

PATCH = (64, 128, 128)


class ClassHead(torch.nn.Module):
    """Logits of K classes from intensity bands, -(k*x - c)^2 / 2: class c wins near x = c/k and
    the winning logits stay near 0, as a trained network's do (float16 keeps them precise)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.register_buffer("centres", torch.arange(k, dtype=torch.float32).view(1, k, 1, 1, 1))
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.k * x - self.centres).square_().mul_(-0.5)  # one buffer, like a network's head


def synthetic_ct(size_zyx, k: int) -> sitk.Image:
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in size_zyx), indexing="ij", sparse=True)
    arr = (np.sin(3 * x + 2 * y) * np.cos(2 * z) + 1) * 0.5 * (k - 1) / k  # bands of all K classes
    arr = arr + rng.normal(0, 0.01, size_zyx).astype(np.float32)
    image = sitk.GetImageFromArray(arr.astype(np.float32))
    image.SetSpacing((0.8, 0.8, 1.5))
    return image


def run_ours(image, k, threads):
    plan = PreprocessingPlan((3.0, 1.6, 1.6), (Normalization("none"),))
    pre = preprocess([image], plan)
    prob = SlidingWindowPredictor([ClassHead(k)], k, PATCH, 0.5, (), "cpu", tile_batch=1).predict(pre.data)
    return to_input_grid(prob, pre.record)


@torch.no_grad()
def run_naive(image, k, threads):
    plan = PreprocessingPlan((3.0, 1.6, 1.6), (Normalization("none"),))
    pre = preprocess([image], plan)
    data, crop = pad_to_patch(torch.from_numpy(pre.data), PATCH)
    shape = tuple(data.shape[1:])
    gauss = gaussian_importance(PATCH)
    acc = torch.zeros((k,) + shape)
    weight = torch.zeros(shape)
    model = ClassHead(k)
    for corner in tile_grid(shape, PATCH, 0.5):
        w = tuple(slice(s, s + p) for s, p in zip(corner, PATCH))
        acc[(slice(None),) + w] += model(data[(slice(None),) + w][None])[0] * gauss
        weight[w] += gauss
    logits = (acc / weight)[(slice(None),) + crop]
    full = F.interpolate(logits[None], size=pre.record.input_shape, mode="trilinear", align_corners=False)[0]
    return full.argmax(0).to(torch.uint8).numpy()


def child(mode: str, k: int, size, threads: int, out_dir: str) -> None:
    torch.set_num_threads(threads)
    image = synthetic_ct(size, k)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    labels = (run_ours if mode == "ours" else run_naive)(image, k, threads)
    seconds = time.monotonic() - t0
    np.save(f"{out_dir}/{mode}.npy", labels)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "peak_rss_mib": peak / 1024, "input_rss_mib": base / 1024, "seconds": seconds,
                      "classes_present": int(len(np.unique(labels)))}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=44)
    parser.add_argument("--size", type=int, nargs=3, default=[150, 256, 256], metavar=("Z", "Y", "X"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=("ours", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.classes, tuple(args.size), args.threads, args.out_dir or tempfile.gettempdir())
        return
    results = {}
    with tempfile.TemporaryDirectory() as out_dir:
        for mode in ("ours", "naive"):
            cmd = [sys.executable, __file__, "--child", mode, "--classes", str(args.classes), "--threads",
                   str(args.threads), "--out-dir", out_dir, "--size"] + [str(s) for s in args.size]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            results[mode] = json.loads(out)
        agree = np.mean(np.load(f"{out_dir}/ours.npy") == np.load(f"{out_dir}/naive.npy"))
    ours, naive = results["ours"], results["naive"]
    print(f"volume {args.size[::-1]} (x y z), {args.classes} classes, torch threads {args.threads}")
    print(f"{'':8}{'peak RSS MiB':>14}{'(image+setup)':>15}{'seconds':>10}")
    for mode in ("ours", "naive"):
        r = results[mode]
        print(f"{mode:8}{r['peak_rss_mib']:>14.0f}{r['input_rss_mib']:>15.0f}{r['seconds']:>10.1f}")
    print(f"peak RSS ratio ours/naive: {ours['peak_rss_mib'] / naive['peak_rss_mib']:.2f}; "
          f"time ratio: {ours['seconds'] / naive['seconds']:.2f}; labels identical: {agree * 100:.3f}% of voxels")


if __name__ == "__main__":
    main()
