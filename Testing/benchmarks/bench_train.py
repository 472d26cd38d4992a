"""Training benchmark: step rate and peak memory, data-pipeline throughput against the step rate,
and against batchgeneratorsv2's nnU-Net default augmentation on the same CPU.

    python Testing/benchmarks/bench_train.py                 # CPU: v2-tiny steps + pipeline
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

    from mednextv2.network import MedNeXt, MedNeXtConfig
    from mednextv2.devices import autocast_dtype
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
    from mednextv2.train.cache import build_cache
    from mednextv2.train.datasets import discover_dataset
    from mednextv2.train.demo import split_scan
    from mednextv2.train.fingerprint import make_fingerprint
    from mednextv2.train.planning import plan_from_scratch
    from mednextv2.train.validation import validate_dataset

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seconds", type=float, default=10.0, help="time per measurement")
    parser.add_argument("--gpu", action="store_true", help="also v2-base at 128^3, batch 2, on CUDA")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
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
