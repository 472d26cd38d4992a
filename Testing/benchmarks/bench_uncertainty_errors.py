"""Which uncertainty map marks the model's errors better: measured on a real held-out scan.

    python Testing/benchmarks/bench_uncertainty_errors.py [--demo DIR ...] [--minutes 4] [--tta on off]
        [--json out.json]

The model is the one `mednextv2 demo` trains (v2-tiny, grey/white matter of the ICBM T1 template at
2 mm, trained on the posterior 60% of the brain); the case is its held-out anterior 40% with its
real tissue labels. `--demo DIR ...` reuses finished demo folders (e.g. `mednextv2 demo --seed 1`);
without it a demo is trained first (`--minutes`). One sliding-window run per TTA setting gives all candidates, from the same
passes:

- entropy:      normalised entropy of the softmax of the stitched (Gaussian-weighted mean) logits,
                resampled to the input grid;
- 1-maxprob:    1 - the largest softmax probability of the same logits (same rows), x K/(K-1):
                what `segment --uncertainty` writes (`preprocessing.class_uncertainty`);
- pass-entropy: each pass's (tile x mirror) normalised entropy, stitched as one extra channel by
                the same Gaussian-weighted mean, then resampled linearly.

For each: AUROC of uncertainty vs error (prediction != reference) per voxel, over the brain
(input != 0) and over all voxels; the error rate among the 5% most uncertain brain voxels and
the share of all brain errors found there. Errors of the one prediction (argmax of the stitched
logits) are the same for every candidate.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk
import torch

from mednextv2.inference import preprocessing
from mednextv2.inference.pipeline import Segmenter
from mednextv2.inference.sliding_window import SlidingWindowPredictor

BLOCKS = 4  # the case cut into slabs: does one candidate win in each part, or only on the whole?


def normalized_entropy(rows: torch.Tensor, probabilities: bool = False) -> torch.Tensor:
    """Entropy of the softmax over the class axis 0, over log(K): in [0, 1]."""
    log_p = torch.log_softmax(rows.float(), dim=0)
    return (-(log_p.exp() * log_p).sum(0) / np.log(rows.shape[0])).clamp_(0, 1)


class WithPassEntropy(torch.nn.Module):
    """The network's logits plus one channel: the normalised entropy of this pass's softmax. The
    predictor's mirroring flips it back and its Gaussian-weighted mean stitches it like a logit."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        out = self.net(x)
        logits = out[0] if isinstance(out, (list, tuple)) else out
        k = logits.shape[1]
        log_p = torch.log_softmax(logits.float(), dim=1)
        entropy = -(log_p.exp() * log_p).sum(1, keepdim=True) / np.log(k)
        return torch.cat([logits, entropy.to(logits.dtype)], dim=1)


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    score = score.astype(np.float64).ravel()
    positive = positive.ravel().astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1
    ranks = (first_rank + (counts - 1) / 2.0)[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def top_fraction(score: np.ndarray, error: np.ndarray, fraction: float = 0.05):
    """(error rate among the `fraction` most uncertain voxels, share of all errors found there)."""
    n = max(1, int(round(fraction * score.size)))
    top = np.argsort(-score.ravel(), kind="stable")[:n]
    hits = error.ravel()[top]
    return float(hits.mean()), float(hits.sum() / max(1, error.sum()))


def to_input_grid_channel(channel: torch.Tensor, record: preprocessing.GridRecord) -> np.ndarray:
    """One network-grid channel resampled linearly onto the input grid (0 outside the crop)."""
    cropped = preprocessing.resample(channel[None].float(), record.cropped_shape, record.nearest_axis)[0]
    out = np.zeros(record.oriented_shape, dtype=np.float32)
    out[tuple(slice(a, b) for a, b in record.bbox)] = cropped.numpy()
    return np.ascontiguousarray(preprocessing.unorient_array(out, record.permutation, record.flips))


def _gray(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (1, 99))
    return np.repeat((np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 255)[..., None], 3, axis=2)


def write_picture(image: np.ndarray, labels: np.ndarray, uncertainty: np.ndarray, error: np.ndarray, path: Path) -> None:
    """PNG of the axial slice with the most errors: the result (grey matter green, white matter
    blue), the uncertainty map as a heat overlay (black-red-yellow, transparent below 0.05), the
    voxels the result got wrong (red). SimpleITK writes it: no plotting library."""
    z = int(np.argmax(error.sum(axis=(1, 2))))
    gray = _gray(image[z])
    result = gray.copy()
    for value, color in ((1, (0, 200, 0)), (2, (60, 120, 255))):
        hit = labels[z] == value
        result[hit] = 0.55 * result[hit] + 0.45 * np.array(color, float)
    u = np.clip(uncertainty[z], 0, 1)[..., None]
    heat = np.concatenate([np.minimum(1, 2 * u), np.clip(2 * u - 1, 0, 1), np.zeros_like(u)], axis=2) * 255
    alpha = np.where(u > 0.05, 0.35 + 0.65 * u, 0.0)
    unsure = gray * (1 - alpha) + heat * alpha
    wrong = gray.copy()
    wrong[error[z]] = (255, 40, 40)
    gap = np.full((gray.shape[0], 4, 3), 255.0)
    rgb = np.concatenate([result, gap, unsure, gap, wrong], axis=1).astype(np.uint8)
    rgb = np.repeat(np.repeat(rgb, 3, axis=0), 3, axis=1)[::-1]  # 2 mm voxels: enlarge; anterior up
    sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(rgb), isVector=True), str(path))


def measure(bundle_dir: Path, image_path: Path, label_path: Path, tta: bool, picture: Optional[Path] = None) -> dict:
    segmenter = Segmenter(str(bundle_dir), device="cpu", tta=tta, threads=1)
    base = segmenter.predictor
    k = segmenter.bundle.n_classes
    inference = segmenter.bundle.inference
    mirror_axes = inference.mirror_axes_per_fold(len(segmenter.bundle.weights)) if tta else ()
    wrapped = SlidingWindowPredictor([WithPassEntropy(m) for m in base.models], k + 1, base.patch, base.step,
                                     mirror_axes, "cpu", base.tile_batch, threads=1,
                                     importance_map=base.importance_map)
    image = sitk.ReadImage(str(image_path))
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
    pre = preprocessing.preprocess([image], segmenter.bundle.preprocessing)
    t0 = time.monotonic()
    scores = wrapped.predict(pre.data)
    seconds = time.monotonic() - t0
    labels, one_minus_max = preprocessing.to_input_grid_with_uncertainty(scores[:k], pre.record)  # the shipped map
    # the entropy of the same resampled rows: through the same slab code, with the formula swapped
    original = preprocessing.class_uncertainty
    preprocessing.class_uncertainty = normalized_entropy
    try:
        _, entropy = preprocessing.to_input_grid_with_uncertainty(scores[:k], pre.record)
    finally:
        preprocessing.class_uncertainty = original
    pass_entropy = np.clip(to_input_grid_channel(scores[k], pre.record), 0, 1)
    error = labels != reference
    brain = sitk.GetArrayViewFromImage(image) != 0
    result = {"tta": tta, "passes": sum(map(len, base.mirrors)) if base.mirrors else 1, "predict_s": round(seconds, 1),
              "brain_voxels": int(brain.sum()), "brain_error_rate": float(error[brain].mean()),
              "dice_like_accuracy_brain": float(1 - error[brain].mean()), "candidates": {}}
    if picture is not None:
        write_picture(sitk.GetArrayFromImage(image).astype(np.float32), labels, one_minus_max, error, picture)
    blocks = np.array_split(np.arange(brain.shape[0]), BLOCKS)  # slabs along the array's first axis
    for name, u in (("entropy", entropy), ("1-maxprob", one_minus_max), ("pass-entropy", pass_entropy)):
        rate, share = top_fraction(u[brain], error[brain])
        result["candidates"][name] = {"auroc_brain": auroc(u[brain], error[brain]), "auroc_all": auroc(u, error),
                                      "top5_error_rate": rate, "top5_error_share": share,
                                      "mean_in_brain": float(u[brain].mean()),
                                      "auroc_brain_per_block": [auroc(u[b][brain[b]], error[b][brain[b]]) for b in blocks]}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, nargs="+", help="finished `mednextv2 demo` folders to reuse (one "
                                                             "measurement each, e.g. demos trained with other seeds)")
    parser.add_argument("--minutes", type=float, default=4.0, help="training minutes when no --demo is given")
    parser.add_argument("--tta", nargs="+", choices=("on", "off"), default=["on", "off"])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--picture", type=Path, help="PNG of the first run: result, uncertainty overlay, errors")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    demos = args.demo
    if demos is None:
        from mednextv2.train.demo import run_demo

        demos = [run_demo(Path("bench-uncertainty-demo"), minutes=args.minutes, device="cpu", progress="none",
                          threads=1).bundle.parent]
    results = []
    for demo, tta in ((d, t) for d in demos for t in args.tta):
        bundle = next(p.parent for p in demo.glob("*/model.json"))
        data = demo / "data"
        print(f"model {bundle}, case {data / 'anterior_image.nii.gz'}; load average {os.getloadavg()[0]:.2f}")
        r = measure(bundle, data / "anterior_image.nii.gz", data / "anterior_label.nii.gz", tta == "on",
                    args.picture if not results else None)
        r["model"] = str(bundle)
        results.append(r)
        print(f"TTA {tta} ({r['passes']} pass(es) per tile, {r['predict_s']} s): brain error rate "
              f"{r['brain_error_rate']:.4f} over {r['brain_voxels']} voxels")
        print(f"  {'candidate':<13} {'AUROC brain':>11} {'AUROC all':>10} {'top-5% err rate':>16} {'errors in top 5%':>17}"
              f"  AUROC brain per slab of the case")
        for name, c in r["candidates"].items():
            print(f"  {name:<13} {c['auroc_brain']:>11.4f} {c['auroc_all']:>10.4f} {c['top5_error_rate']:>16.4f} "
                  f"{c['top5_error_share']:>17.4f}  " + " ".join(f"{a:.4f}" for a in c["auroc_brain_per_block"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
