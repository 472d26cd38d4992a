"""Training benchmark: step rate and peak memory, data-pipeline throughput against the step rate,
and against batchgeneratorsv2's nnU-Net default augmentation on the same CPU; and with --curve,
the Dice reached per CPU minute against the previous release of the loop.

    python Testing/benchmarks/bench_train.py                 # CPU: v2-tiny steps + pipeline
    python Testing/benchmarks/bench_train.py --curve [--minutes 2 4 8] [--old-commit ce68d00] [--json out.json]

--curve builds a small nnU-Net raw dataset from the posterior 60% of the 1 mm MR template (as-is,
rotated 12 degrees and resampled to 1.3 mm, intensity-rescaled), trains v2-tiny from scratch with
`mednextv2 train DATASET --preset v2-tiny --minutes M` with every other option at its default, as a
user would run it, once per budget and per loop ("new": this tree; "old": the tree at
--old-commit, exported with `git archive` into a temporary folder), and segments three copies of
the held-out anterior 40% with the current `mednextv2 segment --no-tta`, so only the training loop
differs: as-is; rotated 9 degrees, 1.1 mm and rescaled ("other"); and "subject-like", a stand-in
for another subject (a smooth random B-spline deformation of about 3 mm, a multiplicative bias
field of +-20 % and Gaussian noise at 3 % of the maximum: anatomy, coil and scanner differ from
one template). It prints grey/white matter Dice and the wall time each run
really took. `--train-args="--patch 48 48 48"` adds options to the new loop's command (tuning).
Time: each run is its budget plus caching and three segmentations (~1-2 min), and the old loop
overruns its budget (179 s for 1 min);
defaults: ~35 min on an idle 2-core CPU (33 min on 2026-11-30). `--minutes 2 --engines new` is a ~5 min check.
    VENV/bin/python Testing/benchmarks/bench_train.py        # + batchgeneratorsv2 ratio (a venv that has it)
    python Testing/benchmarks/bench_train.py --gpu           # + v2-base 128^3 batch 2 on CUDA

batchgeneratorsv2 is never a dependency: install it in a separate venv made with
`python -m venv --system-site-packages` so it cannot replace torch. Each step configuration runs
in a child process so that its peak RSS is its own. Real data as the tests find them (Testing/real_data.py).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "core"))
sys.path.insert(0, str(REPO / "Testing"))
from real_data import data_dir  # noqa: E402

DATA = data_dir()  # MEDNEXTV2_DATA, ../shared/data, else the per-user cache (built once)


def _rate(fn, seconds: float, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def bench_steps(preset: str, patch: int, batch: int, device: str, seconds: float) -> dict:
    """Training iterations per second (forward, Dice+CE over deep supervision, backward, AdamW) and peak memory."""
    import torch

    from mednextv2.devices import autocast_dtype
    from mednextv2.network import MedNeXt, MedNeXtConfig
    from mednextv2.train.loss import DiceCELoss
    from mednextv2.train.optim import make_optimizer

    dev = torch.device(device)
    model = MedNeXt(MedNeXtConfig.preset(preset, n_classes=3)).to(dev)
    opt = make_optimizer(model, 1e-3)
    loss_fn = DiceCELoss()
    x = torch.randn(batch, 1, patch, patch, patch, device=dev)
    y = torch.randint(0, 3, (batch, 1, patch, patch, patch), device=dev)
    dtype = autocast_dtype(dev)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            out = model(x)
        loss_fn(out, y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12)
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rate = _rate(step, seconds)
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"preset": preset, "patch": patch, "batch": batch, "device": device, "it_per_s": round(rate, 3),
            "peak_mib": round(peak / 2**20), "peak_kind": "cuda allocated" if dev.type == "cuda" else "process RSS"}


def _cached_brain(folder: Path):
    from mednextv2.train.checks import validate_dataset
    from mednextv2.train.datasets import discover_dataset
    from mednextv2.train.demo import split_scan
    from mednextv2.train.fingerprint import make_fingerprint
    from mednextv2.train.planning import plan_from_scratch
    from mednextv2.train.preprocessed import build_cache

    tissue = DATA / "mr-brain-tissue"
    dataset, _, _ = split_scan(folder / "data", tissue / "icbm152_2009a_t1.nii.gz", tissue / "icbm152_2009a_tissue.nii.gz")
    data = validate_dataset(discover_dataset(dataset))
    plan = plan_from_scratch(make_fingerprint(data), data.labels, ("MR",), "v2-tiny", "cpu")
    return plan, build_cache(data.dataset.cases, plan, folder / "cache")


def _bgv2_transforms(patch):
    import numpy as np
    from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
    from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    rot = (-30 / 360 * 2 * np.pi, 30 / 360 * 2 * np.pi)
    # nnU-Net v2's default training transforms (nnUNetTrainer.get_training_transforms), 3D, no cascade.
    return ComposeTransforms([
        SpatialTransform(patch, patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0, p_rotation=0.2,
                         rotation=rot, p_scaling=0.2, scaling=(0.7, 1.4), p_synchronize_scaling_across_axes=1,
                         bg_style_seg_sampling=False, mode_seg="bilinear"),
        RandomTransform(GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_channel=1, synchronize_channels=True), 0.1),
        RandomTransform(GaussianBlurTransform(blur_sigma=(0.5, 1.0), synchronize_channels=False, synchronize_axes=False,
                                              p_per_channel=0.5, benchmark=True), 0.2),
        RandomTransform(MultiplicativeBrightnessTransform(multiplier_range=BGContrast((0.75, 1.25)),
                                                          synchronize_channels=False, p_per_channel=1), 0.15),
        RandomTransform(ContrastTransform(contrast_range=BGContrast((0.75, 1.25)), preserve_range=True,
                                          synchronize_channels=False, p_per_channel=1), 0.15),
        RandomTransform(SimulateLowResolutionTransform(scale=(0.5, 1), synchronize_channels=False, synchronize_axes=True,
                                                       ignore_axes=None, allowed_channels=None, p_per_channel=0.5), 0.25),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=1, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1), 0.1),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=0, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1), 0.3),
        MirrorTransform(allowed_axes=(0, 1, 2)),
    ])


def bench_pipeline(patch: int, batch: int, seconds: float) -> dict:
    """Batches per second: our sampler + batched torch augmentation, and (if installed) batchgeneratorsv2
    per-sample nnU-Net transforms on the very same context crops."""
    import torch

    from mednextv2.train.augment import AugmentConfig, augment
    from mednextv2.train.sampler import PatchSampler

    with tempfile.TemporaryDirectory() as tmp:
        _, cached = _cached_brain(Path(tmp))
        sampler = PatchSampler(cached, (patch,) * 3, batch, seed=0)
        gen = torch.Generator().manual_seed(0)
        cfg = AugmentConfig()

        def ours():
            b = sampler.sample()
            augment(torch.from_numpy(b.image), torch.from_numpy(b.label), (patch,) * 3, cfg, gen)

        out = {"patch": patch, "batch": batch, "ours_batches_per_s": round(_rate(ours, seconds), 2)}
        out["sampling_only_batches_per_s"] = round(_rate(sampler.sample, seconds / 2), 2)
        try:
            transforms = _bgv2_transforms((patch,) * 3)
        except ImportError as e:
            out["bgv2"] = f"not installed ({e.name}); run with .venv-bench/bin/python"
            return out

        def theirs():
            b = sampler.sample()
            for i in range(batch):
                transforms(image=torch.from_numpy(b.image[i]), segmentation=torch.from_numpy(b.label[i]).to(torch.int16))

        out["bgv2_batches_per_s"] = round(_rate(theirs, seconds), 2)
        out["ours_over_bgv2"] = round(out["ours_batches_per_s"] / out["bgv2_batches_per_s"], 2)
        return out


# ---------------------------------------------------------------- Dice per CPU minute
def _rotated(image, degrees: float, spacing: float, label: bool):
    import SimpleITK as sitk

    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    rotation = sitk.Euler3DTransform(centre, 0.0, 0.0, degrees * 3.141592653589793 / 180)
    size = [int(round(n * s / spacing)) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(image, size, rotation, sitk.sitkNearestNeighbor if label else sitk.sitkLinear,
                         image.GetOrigin(), [spacing] * 3, image.GetDirection(), 0, image.GetPixelID())


def _rescaled(image, scale: float, gamma: float):
    import numpy as np
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image).astype(np.float32)
    top = float(array.max()) or 1.0
    out = sitk.GetImageFromArray((np.clip(array / top, 0, None) ** gamma * top * scale).astype(np.float32))
    out.CopyInformation(image)
    return out


def _subject_like(image, label, seed: int = 1):
    """The template deformed, bias-field modulated and noisy: a stand-in for another subject's scan."""
    import numpy as np
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    warp = sitk.BSplineTransformInitializer(image, [4, 4, 4], 3)
    warp.SetParameters(tuple(rng.normal(0, 2.0, len(warp.GetParameters()))))
    image = sitk.Resample(image, image, warp, sitk.sitkLinear, 0.0)
    label = sitk.Resample(label, label, warp, sitk.sitkNearestNeighbor, 0)
    array = sitk.GetArrayFromImage(image)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in array.shape], indexing="ij")
    bias = np.exp(0.2 * (0.7 * x + 0.5 * y - 0.6 * z + 0.4 * x * y))
    noisy = array * bias + rng.normal(0, 0.03 * float(array.max()), array.shape) * (array > 0)
    out = sitk.GetImageFromArray(noisy.astype(np.float32))
    out.CopyInformation(image)
    return out, label


def build_curve_dataset(folder: Path):
    """nnU-Net raw dataset of template copies (posterior part) and held-out (image, label) pairs (anterior)."""
    import SimpleITK as sitk

    from mednextv2.train.demo import LABELS, split_scan

    tissue = DATA / "mr-brain-tissue"
    _, test_image, test_label = split_scan(folder / "split", tissue / "icbm152_2009a_t1.nii.gz",
                                           tissue / "icbm152_2009a_tissue.nii.gz")
    image = sitk.ReadImage(str(folder / "split" / "posterior_image.nii.gz"), sitk.sitkFloat32)
    label = sitk.ReadImage(str(folder / "split" / "posterior_label.nii.gz"))
    raw = folder / "Dataset001_Template"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    copies = {"asis": (image, label), "rotated": (_rotated(image, 12, 1.3, False), _rotated(label, 12, 1.3, True)),
              "rescaled": (_rescaled(image, 0.6, 1.3), label)}
    for name, (img, lab) in copies.items():
        sitk.WriteImage(img, str(raw / "imagesTr" / f"{name}_0000.nii.gz"), True)
        sitk.WriteImage(lab, str(raw / "labelsTr" / f"{name}.nii.gz"), True)
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR"}, "labels": {"background": 0, **{v: k for k, v in LABELS.items()}},
        "numTraining": len(copies), "file_ending": ".nii.gz"}))
    held_image, held_label = sitk.ReadImage(str(test_image), sitk.sitkFloat32), sitk.ReadImage(str(test_label))
    other = folder / "heldout_other_image.nii.gz", folder / "heldout_other_label.nii.gz"
    sitk.WriteImage(_rescaled(_rotated(held_image, -9, 1.1, False), 1.4, 0.8), str(other[0]), True)
    sitk.WriteImage(_rotated(held_label, -9, 1.1, True), str(other[1]), True)
    subject = folder / "heldout_subject_image.nii.gz", folder / "heldout_subject_label.nii.gz"
    for image, path in zip(_subject_like(held_image, held_label), subject):
        sitk.WriteImage(image, str(path), True)
    return raw, {"heldout": (test_image, test_label), "heldout_other": other, "heldout_subject": subject}


def _old_tree(commit: str, folder: Path) -> Path:
    """The package as it was at `commit`, from git, without touching any worktree."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "core"], capture_output=True, check=True).stdout
    folder.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder / "core"


def _engine(core: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(core))
    return subprocess.run([sys.executable, "-m", "mednextv2", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _dice(bundle: Path, cases: dict, folder: Path) -> dict:
    import SimpleITK as sitk

    from mednextv2.train.demo import LABELS
    from mednextv2.train.evaluate import dice_per_class

    out = {}
    for name, (image, label) in cases.items():
        pred = folder / f"{name}_pred.nii.gz"
        done = _engine(REPO / "core", "segment", str(image), "-m", str(bundle), "-o", str(pred), "--no-tta",
                       "--device", "cpu", "--progress", "none", timeout=1800)
        if done.returncode:
            raise RuntimeError(f"segment failed: {done.stderr[-2000:]}")
        scores = dice_per_class(sitk.GetArrayFromImage(sitk.ReadImage(str(pred))),
                                sitk.GetArrayFromImage(sitk.ReadImage(str(label))), len(LABELS) + 1)
        out[name] = {LABELS[v]: round(scores[v - 1], 4) for v in LABELS}
    return out


def dice_curve(minutes, old_commit: str, engines, train_args=()) -> list:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw, cases = build_curve_dataset(tmp / "data")
        cores = {"new": REPO / "core"}
        if "old" in engines:
            cores["old"] = _old_tree(old_commit, tmp / "old")
        for m in minutes:
            for engine in engines:
                run = tmp / f"{engine}_{m}"
                started = time.monotonic()
                limit = m * 60 * 3 + 300
                try:
                    done = _engine(cores[engine], "train", str(raw), "-o", str(run / "model"), "--preset", "v2-tiny",
                                   "--minutes", str(m), "--device", "cpu", "--progress", "none",
                                   *(train_args if engine == "new" else ()), timeout=limit)
                except subprocess.TimeoutExpired:  # a budget overrun this large is a result, not a crash
                    row = {"engine": engine, "budget_min": m, "wall_s": None, "timed_out_after_s": limit, "dice": None}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    continue
                seconds = time.monotonic() - started
                if done.returncode:
                    raise RuntimeError(f"{engine} training failed: {done.stderr[-3000:]}")
                row = {"engine": engine, "budget_min": m, "wall_s": round(seconds, 1),
                       "dice": _dice(run / "model", cases, run)}
                print(json.dumps(row), flush=True)
                row["log_tail"] = done.stderr.splitlines()[-15:]  # epochs and timings, for the JSON only
                rows.append(row)
    print("\n| budget | loop | wall s | held-out grey | held-out white | other grey | other white | subject-like grey "
          "| subject-like white |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        d = r["dice"]
        if d is None:
            print(f"| {r['budget_min']} min | {r['engine']} | > {r['timed_out_after_s']:.0f} (stopped) | - | - | - | - | - | - |")
            continue
        print(f"| {r['budget_min']} min | {r['engine']} | {r['wall_s']:.0f} | {d['heldout']['grey matter']:.3f} | "
              f"{d['heldout']['white matter']:.3f} | {d['heldout_other']['grey matter']:.3f} | "
              f"{d['heldout_other']['white matter']:.3f} | {d['heldout_subject']['grey matter']:.3f} | "
              f"{d['heldout_subject']['white matter']:.3f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seconds", type=float, default=10.0, help="time per measurement")
    parser.add_argument("--gpu", action="store_true", help="also v2-base at 128^3, batch 2, on CUDA")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--curve", action="store_true", help="Dice per CPU minute, this loop against --old-commit's")
    parser.add_argument("--minutes", type=float, nargs="+", default=[2, 4, 8], help="budgets for --curve")
    parser.add_argument("--old-commit", default="ce68d00", help="the previous release of the loop (--curve)")
    parser.add_argument("--engines", nargs="+", default=["new", "old"], choices=("new", "old"))
    parser.add_argument("--json", type=Path, help="--curve: write the rows here")
    parser.add_argument("--train-args", default="", help='--curve: more `train` options for the new loop, as --train-args="--patch 48 48 48"')
    args = parser.parse_args()
    if args.curve:
        rows = dice_curve(args.minutes, args.old_commit, args.engines, args.train_args.split())
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(bench_steps(**json.loads(args.child), seconds=args.seconds)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPU(s)")
    configs = [dict(preset="v2-tiny", patch=32, batch=2, device="cpu"), dict(preset="v2-tiny", patch=64, batch=2, device="cpu")]
    if args.gpu:
        configs.append(dict(preset="v2-base", patch=128, batch=2, device="cuda"))
    steps = {}
    for cfg in configs:
        cmd = [sys.executable, __file__, "--child", json.dumps(cfg), "--seconds", str(args.seconds)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        result = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        steps[(cfg["patch"], cfg["device"])] = result
        print("train step:", json.dumps(result))
    for patch in (32, 64):
        pipe = bench_pipeline(patch, 2, args.seconds)
        step = steps[(patch, "cpu")]["it_per_s"]
        pipe["pipeline_over_cpu_step_rate"] = round(pipe["ours_batches_per_s"] / step, 1)
        print("pipeline:", json.dumps(pipe))


if __name__ == "__main__":
    main()
