"""What `--fast` costs in accuracy (and buys in time), measured on a really trained model.

Trains a small MedNeXt for a few minutes on the real brain-tissue task (grey/white matter,
mr-brain-tissue in the real data found as by the tests, Testing/real_data.py; 1 mm) at the bundle's
target spacing, then segments the image
with the normal and the --fast settings, side by side in this process, and prints Dice per
class against the reference labels and the time of each. Both runs use TTA off so only the
grid differs. The model is trained and evaluated on the one subject available (the comparison
is between the two modes of the same model, not a generalisation estimate).

    python Testing/benchmarks/bench_segment_fast.py [--iterations 300] [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Testing/ for segment_fixtures

from mednextv2 import segment  # noqa: E402
from mednextv2.bundle import Bundle  # noqa: E402
from mednextv2.inference.preprocessing import labels_to_network_grid, preprocess  # noqa: E402
from mednextv2.network import MedNeXt, MedNeXtConfig  # noqa: E402
from real_data import data_dir  # noqa: E402

DATA = data_dir()  # MEDNEXTV2_DATA, ../shared/data, else the per-user cache (built once)
PATCH = (32, 32, 32)


def spec(config: MedNeXtConfig) -> dict:
    return {
        "format_version": 1, "id": "bench-brain-tissue", "title": "Brain tissue (benchmark)",
        "network": config.to_dict(),
        "labels": [{"value": 1, "name": "grey matter", "color": [128, 128, 128]},
                   {"value": 2, "name": "white matter", "color": [255, 255, 255]}],
        "channels": [{"name": "T1", "modality": "MR"}],
        "preprocessing": {"axis_order": "zyx", "target_spacing": [2.0, 2.0, 2.0], "crop_to_nonzero": True,
                          "normalization": [{"scheme": "zscore"}]},
        "inference": {"patch_size": list(PATCH), "step": 0.5, "mirror_axes": [0, 1, 2]},
    }


def train(image: sitk.Image, labels: sitk.Image, bundle_spec: dict, iterations: int, seed: int = 0) -> Bundle:
    plan = Bundle.create(bundle_spec, [MedNeXt(MedNeXtConfig.from_dict(bundle_spec["network"])).state_dict()]).preprocessing
    pre = preprocess([image], plan)
    target = torch.from_numpy(labels_to_network_grid(labels, pre.record).astype(np.int64))
    data = torch.from_numpy(pre.data)
    model = MedNeXt(MedNeXtConfig.from_dict(bundle_spec["network"]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = np.random.default_rng(seed)
    fg = np.argwhere(target.numpy() > 0)
    shape = np.array(target.shape)
    started = time.monotonic()
    for it in range(iterations):
        xs, ys = [], []
        for _ in range(2):
            centre = fg[gen.integers(len(fg))] if gen.random() < 0.67 else gen.integers(0, shape)
            lo = np.clip(centre - np.array(PATCH) // 2, 0, shape - np.array(PATCH))
            sl = tuple(slice(a, a + p) for a, p in zip(lo, PATCH))
            xs.append(data[(slice(None),) + sl])
            ys.append(target[sl])
        x, y = torch.stack(xs), torch.stack(ys)
        logits = model(x)
        prob = logits.softmax(1)
        onehot = F.one_hot(y, 3).permute(0, 4, 1, 2, 3).float()
        dice = 1 - ((2 * (prob * onehot).sum((0, 2, 3, 4)) + 1) / (prob.sum((0, 2, 3, 4)) + onehot.sum((0, 2, 3, 4)) + 1))[1:].mean()
        loss = F.cross_entropy(logits, y) + dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        for group in opt.param_groups:
            group["lr"] = 3e-3 * (1 - (it + 1) / iterations) ** 0.9
        if (it + 1) % 50 == 0:
            print(f"  iteration {it + 1}/{iterations}: loss {loss.item():.3f} ({time.monotonic() - started:.0f} s)", flush=True)
    return Bundle.create(bundle_spec, [model.state_dict()])


def dice_per_class(pred: np.ndarray, ref: np.ndarray, n: int):
    return [2 * np.sum((pred == c) & (ref == c)) / max(1, np.sum(pred == c) + np.sum(ref == c)) for c in range(1, n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    image = sitk.ReadImage(str(DATA / "mr-brain-tissue" / "icbm152_2009a_t1.nii.gz"))
    labels = sitk.ReadImage(str(DATA / "mr-brain-tissue" / "icbm152_2009a_tissue.nii.gz"))
    config = MedNeXtConfig(in_channels=1, n_channels=8, n_classes=3, exp_r=2, kernel_size=3, block_counts=1,
                           grn=True, deep_supervision=False)
    print(f"training {args.iterations} iterations, patch {PATCH}, 2 mm, torch threads {args.threads}")
    bundle = train(image, labels, spec(config), args.iterations)
    ref = sitk.GetArrayFromImage(labels)
    with tempfile.TemporaryDirectory() as tmp:
        bundle.save(Path(tmp) / "model")
        rows = []
        for name, fast in (("normal (2 mm)", False), ("--fast (4 mm)", True)):
            t0 = time.monotonic()
            out = segment(image, bundle, device="cpu", tta=False, fast=fast)
            seconds = time.monotonic() - t0
            rows.append((name, seconds, dice_per_class(sitk.GetArrayFromImage(out), ref, 3)))
    print(f"\n{'mode':<16}{'time s':>8}{'Dice GM':>10}{'Dice WM':>10}")
    for name, seconds, dice in rows:
        print(f"{name:<16}{seconds:>8.2f}{dice[0]:>10.3f}{dice[1]:>10.3f}")
    (n_name, n_s, n_d), (f_name, f_s, f_d) = rows
    print(f"\n--fast: {n_s / f_s:.1f}x faster; Dice change GM {f_d[0] - n_d[0]:+.3f}, WM {f_d[1] - n_d[1]:+.3f}")


if __name__ == "__main__":
    main()
