"""Segmenting with a model trained on the CPU (32^3 patches): ours against an earlier engine.

    python Testing/benchmarks/bench_segment_small_patch.py [--baseline 538bbbb] [--tta on off]
        [--repeats 1] [--under-load] [--loads idle "matmul 2 threads"] [--engines ours baseline] [--json out.json]
    python Testing/benchmarks/bench_segment_small_patch.py --sweep [--patches 16 32 64 128]
        [--batches 1 2 4 8 16 32] [--seconds 3]

The model is what `mednextv2 train --preset v2-tiny` writes on this machine for the brain-tissue
task (v2-tiny, 3 tissue classes, 1 mm, z-score over the non-zero crop, 32^3 patches, step 0.5,
mirror axes 0-2) with random weights (speed does not depend on them). The image is the 1 mm MR
template (mr-brain-tissue in the real data, Testing/real_data.py, 182x218x182).

Each engine segments in a child process of its own, set up as the `mednextv2` command sets up its
own (mednextv2.process_memory, the thread policy of mednextv2.threads): this tree, and the
baseline commit's `core/` taken out of git (`git archive`) into a temporary folder. The two take
turns, so background load hits both alike; the parent prints each run's time (the `segment` call
alone, after imports) and CPU time (less inflated by a busy machine), the tile count, forward passes per second (tiles x mirrored passes) and
network-grid voxels per second, the ratio baseline/ours, and how many voxels the two labelled
alike. `--under-load` repeats everything beside each competitor of bench_network.py (a 1-thread
and a 2-thread torch process doing matmuls, a second engine), started here.

`--sweep` (in this process, set up as an engine process) times the network alone at tile sizes
16^3-128^3 and batch sizes 1-32 and prints the cost per voxel: what FORWARD_VOXELS in
mednextv2/inference/sliding_window.py is chosen from. Results: docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # Testing/ for real_data
from real_data import data_dir  # noqa: E402

PATCH = (32, 32, 32)


def bundle_spec(config: dict) -> dict:
    return {
        "format_version": 1, "id": "bench-small-patch", "title": "Brain tissue, CPU-trained layout (benchmark)",
        "network": config,
        "labels": [{"value": 1, "name": "CSF", "color": [0, 0, 255]},
                   {"value": 2, "name": "grey matter", "color": [128, 128, 128]},
                   {"value": 3, "name": "white matter", "color": [255, 255, 255]}],
        "channels": [{"name": "T1", "modality": "MR"}],
        "preprocessing": {"axis_order": "zyx", "target_spacing": [1.0, 1.0, 1.0], "crop_to_nonzero": True,
                          "normalization": [{"scheme": "zscore"}]},
        "inference": {"patch_size": list(PATCH), "step": 0.5, "mirror_axes": [0, 1, 2]},
    }


def make_bundle(folder: Path) -> Path:
    import torch

    from mednextv2.bundle import Bundle
    from mednextv2.network import MedNeXt, MedNeXtConfig

    torch.manual_seed(0)
    config = MedNeXtConfig.preset("v2-tiny", in_channels=1, n_classes=4)
    model = MedNeXt(config)
    for name, p in model.named_parameters():
        if "grn" in name:  # trained GRN parameters are of this size; zeros would skip its cost nowhere but look untrained
            torch.nn.init.normal_(p, 0.0, 0.3)
    return Bundle.create(bundle_spec(config.to_dict()), [model.state_dict()]).save(folder / "bundle")


def baseline_core(commit: str, folder: Path) -> Path:
    """The baseline commit's core/ package, from git, in a folder of its own."""
    archive = folder / "baseline.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), commit, "core"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder / "baseline", filter="data")
    return folder / "baseline" / "core"


# ---------------------------------------------------------------- child: one segmentation
def child(core: str, bundle: str, image: str, output: str, tta: bool) -> dict:
    sys.path.insert(0, core)
    import logging

    from mednextv2.inference.pipeline import Segmenter
    from mednextv2.process_memory import keep_freed_memory

    keep_freed_memory()
    tiles = []

    class TileCount(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("tile plan:"):
                tiles.append(int(record.getMessage().split()[2]))

    logger = logging.getLogger("mednextv2.inference.sliding_window")
    logger.setLevel(logging.INFO)
    logger.addHandler(TileCount())
    seg = Segmenter(bundle, device="cpu", tta=tta)
    passes = sum(map(len, seg.predictor.mirrors))
    grid = []
    original = seg.predictor.predict

    def predict(data, **options):  # newer engines pass their stitching sink
        grid.append(int(np.prod(np.shape(data)[1:])))
        return original(data, **options)

    seg.predictor.predict = predict
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    seg.segment_to_file(image, output)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": seconds, "cpu_seconds": cpu, "tiles": tiles[0], "passes_per_tile": passes, "grid_voxels": grid[0],
            "tile_batch": seg.predictor.tile_batch, "load_before": load, "core": core}


def run_child(core: Path, bundle: Path, image: Path, output: Path, tta: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", str(core), str(bundle), str(image), str(output), "on" if tta else "off"]
    env = dict(os.environ, PYTHONPATH=str(core))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"segmenting with {core} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def labels_of(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def compare(baseline: str, tta_modes, repeats: int, under_load: bool, engines=("ours", "baseline"), competitors=None) -> list:
    sys.path.insert(0, str(HERE))
    from bench_network import COMPETITORS, competing

    image = data_dir() / "mr-brain-tissue" / "icbm152_2009a_t1.nii.gz"
    rows = []
    loads = [("idle", None)] + ([(name, args) for name, args in COMPETITORS.items()] if under_load else [])
    if competitors:
        loads = [(name, args) for name, args in loads if name in competitors]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = make_bundle(tmp)
        cores = {"ours": ROOT / "core", "baseline": baseline_core(baseline, tmp)}
        for load_name, load_args in loads:
            with competing(load_args):
                for tta in tta_modes:
                    for r in range(repeats):
                        got = {}
                        order = tuple(reversed(engines)) if r % 2 else tuple(engines)
                        for name in order:
                            out = tmp / f"{name}.nii.gz"
                            got[name] = run_child(cores[name], bundle, image, out, tta == "on")
                            got[name]["labels"] = labels_of(out)
                        labels = {name: g.pop("labels") for name, g in got.items()}
                        row = dict(got, load=load_name, tta=tta, repeat=r)
                        if len(got) == 2:
                            row.update(ratio=got["baseline"]["seconds"] / got["ours"]["seconds"],
                                       labels_same=float(np.mean(labels["ours"] == labels["baseline"])))
                        rows.append(row)
                        for name in engines:
                            g = got[name]
                            forwards = g["tiles"] * g["passes_per_tile"]
                            print(f"{load_name:17s} TTA {tta:3s} {name:8s} {g['seconds']:7.1f} s  {g['tiles']} tiles x "
                                  f"{g['passes_per_tile']} passes  {forwards / g['seconds']:6.1f} passes/s  "
                                  f"{g['grid_voxels'] / g['seconds'] / 1e6:5.2f} Mvox/s (grid)  tile batch {g['tile_batch']}  "
                                  f"CPU {g['cpu_seconds']:.1f} s  load {g['load_before']:.1f}", flush=True)
                        if "ratio" in row:
                            print(f"{'':17s} baseline/ours {row['ratio']:.2f}x, labels identical on "
                                  f"{row['labels_same']:.6%} of voxels", flush=True)
    return rows


def table(rows: list) -> None:
    """The runs as docs/benchmarks.md's table rows (both engines only)."""
    print("\n| beside | TTA | tiles x passes | ours | baseline | baseline / ours (wall) | passes/s ours / baseline "
          "| Mvox/s (grid) ours / baseline | CPU s ours / baseline | baseline / ours (CPU) | labels identical | load |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        if "ratio" not in row:
            continue
        o, b = row["ours"], row["baseline"]
        forwards = o["tiles"] * o["passes_per_tile"]
        print(f"| {row['load']} | {row['tta']} | {o['tiles']} x {o['passes_per_tile']} | {o['seconds']:.1f} s | "
              f"{b['seconds']:.1f} s | **{row['ratio']:.2f}x** | {forwards / o['seconds']:.1f} / {forwards / b['seconds']:.1f} | "
              f"{o['grid_voxels'] / o['seconds'] / 1e6:.3f} / {b['grid_voxels'] / b['seconds'] / 1e6:.3f} | "
              f"{o['cpu_seconds']:.1f} / {b['cpu_seconds']:.1f} | {b['cpu_seconds'] / o['cpu_seconds']:.2f}x | "
              f"{row['labels_same']:.4%} | {o['load_before']:.1f} / {b['load_before']:.1f} |")


# ---------------------------------------------------------------- the network alone: cost per voxel
def sweep(patches, batches, seconds: float) -> list:
    import torch

    from mednextv2.network import MedNeXt, MedNeXtConfig
    from mednextv2.process_memory import keep_freed_memory
    from mednextv2.threads import ThreadPolicy

    keep_freed_memory()
    policy = ThreadPolicy()
    model = MedNeXt(MedNeXtConfig.preset("v2-tiny", in_channels=1, n_classes=4)).eval()
    rows = []
    for p in patches:
        for b in batches:
            if b * p ** 3 > 128 ** 3:  # one 128^3 tile: far beyond where the per-voxel cost stops falling
                continue
            x = torch.randn(b, 1, p, p, p)
            with torch.inference_mode():
                policy.update()
                model(x)
                n, t0, c0 = 0, time.perf_counter(), time.process_time()
                while n < 2 or time.perf_counter() - t0 < seconds:
                    policy.update()
                    model(x)
                    n += 1
            wall, cpu = (time.perf_counter() - t0) / n, (time.process_time() - c0) / n
            row = {"patch": p, "batch": b, "ms_per_tile": wall / b * 1e3, "cpu_ns_per_voxel": cpu / (b * p ** 3) * 1e9,
                   "mvox_per_s": b * p ** 3 / wall / 1e6, "threads": torch.get_num_threads(), "load": os.getloadavg()[0]}
            rows.append(row)
            print(f"{p:4d}^3 batch {b:2d}: {row['ms_per_tile']:8.1f} ms/tile  {row['mvox_per_s']:5.2f} Mvox/s  "
                  f"{row['cpu_ns_per_voxel']:6.0f} CPU ns/voxel  ({row['threads']} threads, load {row['load']:.1f})",
                  flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="538bbbb", help="the commit whose engine is the baseline")
    parser.add_argument("--tta", nargs="+", choices=("on", "off"), default=["off", "on"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--under-load", action="store_true")
    parser.add_argument("--engines", nargs="+", choices=("ours", "baseline"), default=["ours", "baseline"])
    parser.add_argument("--loads", nargs="+", help="only these loads (idle and/or bench_network competitor names)")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--patches", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        core, bundle, image, output, tta = args.child
        print(json.dumps(child(core, bundle, image, output, tta == "on")))
        return
    sys.path.insert(0, str(ROOT / "core"))
    print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start", flush=True)
    if args.sweep:
        rows = sweep(args.patches, args.batches, args.seconds)
    else:
        rows = compare(args.baseline, args.tta, args.repeats, args.under_load, args.engines, args.loads)
        table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
