"""Segment one case end to end: ours against nnU-Net v2's nnUNetPredictor and MONAI's sliding window.

Same device (CPU), same network object class and weights (a small MedNeXt from
mednextv2.network; random weights, seed 0, plus an intensity term so that labels follow the
anatomy: see `banded`), same input file, step 0.5, TTA off:
- ours:   `Segmenter(bundle).segment_to_file(input, out.seg.nrrd)` (read, orient, normalize,
          resample, sliding window, back to the input grid, .seg.nrrd export), in a process
          set up as the `mednextv2` command sets up its own (mednextv2.process_memory);
- nnunet: nnU-Net's own SimpleITKIO reader, then `nnUNetPredictor.predict_single_npy_array`
          with a plans/dataset json built here to match our preprocessing (CTNormalization with
          the bundle's clip/mean/std; linear resampling, order 1, instead of nnU-Net's default
          cubic, nearest across slices when anisotropic as both do) and its export to .nrrd.
          This is nnU-Net's single-process path (predict_from_files only adds worker processes
          for many cases, which would also hide memory from this process's peak);
- monai:  our reading and preprocessing, MONAI's `sliding_window_inference` (overlap 0.5,
          gaussian mode, sigma 1/8, one tile per forward) on that same array, then our
          back-to-the-input-grid and export, so only the sliding window differs.
Each engine runs in its own child process (fresh peak RSS: VmHWM); a sampler thread records
the wall time and the largest RSS seen in each stage. The parent reads all outputs back and
counts the voxels labelled as ours. Timings exclude the library imports (reported apart).

Cases: `lung` (<real data>/ct-lung/lung1_image.nrrd, 512x512x48 at 0.57x0.57x5 mm, v2-tiny,
2 classes), `lung44` (the same CT and grid, the 44-class network below stitched as a model imported from
nnU-Net), `lung44-native` (the same at the CT's own spacing: a 48x512x512 network grid) and
`synthetic44` (a generated 512x512x300 CT, 0.8x0.8x1.5 mm, a very small
MedNeXt with a 44-class head). The networks are small so that a case fits a few minutes per
engine on a 2-core CPU; the network costs the same in every engine (one tile per forward),
so the differences are preprocessing, stitching and going back to the input grid.
`--baseline-network plain` puts the plain literal implementation of the same network (same
weights) into nnU-Net and MONAI instead of our class, so that each engine runs its own network
code, as their users would with the official-style module. Results and their reading:
docs/benchmarks.md.

Install the baselines ONLY in a separate venv (the system torch must stay as it is; the
nnunetv2 wheel pulls timm -> torchvision -> a CUDA torch, which the predictor does not need,
so it goes in with --no-deps plus its light dependencies):

    python3 -m venv --system-site-packages .venv-bench
    .venv-bench/bin/pip install monai==1.6.1
    .venv-bench/bin/pip install --no-deps nnunetv2==2.8.1 dynamic-network-architectures==0.4.4 acvl-utils==0.2.6
    .venv-bench/bin/pip install tqdm scipy scikit-learn scikit-image pandas graphviz tifffile nibabel \
        seaborn imagecodecs yacs einops "blosc2>=3.3.2" connected-components-3d batchgenerators batchgeneratorsv2

Run (with the venv's python, which sees the system torch and the editable mednextv2):

    .venv-bench/bin/python Testing/benchmarks/bench_segment_engines.py [--cases lung synthetic44]
        [--engines ours nnunet monai] [--threads 1] [--repeats 1] [--synthetic-size 512 512 300]
        [--json out.json] [--under-load]

`--under-load` runs every case idle and then beside each competitor of bench_network.py (a
1-thread and a 2-thread torch process doing matmuls, a second engine), which it starts itself;
each engine then runs with its own default thread setting (ours: the free cores,
mednextv2.threads; nnU-Net and MONAI: torch's default, every core), as their users would.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

ENGINES = ("ours", "nnunet", "monai")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Testing/ for real_data
from real_data import data_dir  # noqa: E402

DATA = data_dir()  # MEDNEXTV2_DATA, ../shared/data, else the per-user cache (built once)
BASELINE_NET_ENV = "MEDNEXTV2_BENCH_BASELINE_NET"
CT_NORM = {"scheme": "ct", "clip": [-1000.0, 500.0], "mean": -300.0, "std": 400.0}


# ---------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    name: str
    network: dict                          # MedNeXtConfig.to_dict()
    patch: Tuple[int, int, int]
    target_spacing: Tuple[float, float, float]  # (z, y, x) mm
    importance_map: str = "mednextv2"  # "nnunet": tiles stitched as in a model imported from nnU-Net


def cases() -> Dict[str, Case]:
    from mednextv2.network import MedNeXtConfig

    tiny2 = MedNeXtConfig.preset("v2-tiny", in_channels=1, n_classes=2, deep_supervision=False)
    small44 = MedNeXtConfig(in_channels=1, n_channels=4, n_classes=44, exp_r=2, kernel_size=3, block_counts=[1] * 9,
                            grn=True, deep_supervision=False)
    return {
        # 48 x 195 x 195 network grid (anisotropic: nearest across the 5 mm slices in both engines)
        "lung": Case("lung", tiny2.to_dict(), (32, 128, 128), (5.0, 1.5, 1.5)),
        # a 44-class model imported from nnU-Net (its tile weights), on the lung case's grid
        "lung44": Case("lung44", small44.to_dict(), (32, 128, 128), (5.0, 1.5, 1.5), "nnunet"),
        # the same planned at the CT's own spacing: the 48 x 512 x 512 network grid is the input grid
        "lung44-native": Case("lung44-native", small44.to_dict(), (32, 128, 128), (5.0, 0.5703125, 0.5703125),
                              "nnunet"),
        # 150 x 171 x 171 network grid for the 512x512x300 volume
        "synthetic44": Case("synthetic44", small44.to_dict(), (64, 128, 128), (3.0, 2.4, 2.4)),
    }


def band_centres_hu(bands: int = 11, norm: dict = CT_NORM) -> np.ndarray:
    """Intensities (HU) at the centres of the intensity bands `banded` gives one class each."""
    lo, hi = norm["clip"]
    return lo + (np.arange(bands) + 0.5) * (hi - lo) / bands


def synthetic_ct(size_xyz: Tuple[int, int, int], path: Path) -> Path:
    """A CT-like int16 volume (0.8x0.8x1.5 mm): air, body, fat rim, two lungs, spine, twelve organs,
    10 HU noise. Tissues sit at the centres of `banded`'s intensity bands, so that, as with a
    trained network, labels are clear inside structures and close calls happen at their edges."""
    import SimpleITK as sitk

    nx, ny, nz = size_xyz
    hu = band_centres_hu()
    rng = np.random.default_rng(0)
    z = np.linspace(-1, 1, nz, dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    x = np.linspace(-1, 1, nx, dtype=np.float32)[None, None, :]
    body_r = 0.85 + 0.05 * np.cos(3 * z)
    body = (x / body_r) ** 2 + (y / (0.7 * body_r)) ** 2
    vol = np.full((nz, ny, nx), -1000, dtype=np.float32)

    def paint(mask, value):
        vol[np.broadcast_to(mask, vol.shape)] = value

    paint(body < 1.0, hu[6])                                                      # fat rim
    paint(body < 0.85, hu[7])                                                     # soft tissue
    for cx in (-0.4, 0.4):                                                        # lungs
        paint(((x - cx) / 0.3) ** 2 + ((y + 0.05) / 0.4) ** 2 + ((z - 0.3) / 0.8) ** 2 < 1.0, hu[1])
    paint((x / 0.08) ** 2 + ((y - 0.45) / 0.08) ** 2 < 1.0, hu[10])               # spine
    for _ in range(12):                                                           # organs / lesions
        c = rng.uniform(-0.5, 0.5, 3)
        r = rng.uniform(0.05, 0.2)
        paint((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < r * r, hu[rng.integers(2, 10)])
    vol += rng.normal(0, 10, vol.shape).astype(np.float32)
    image = sitk.GetImageFromArray(np.clip(vol, -1024, 3071).astype(np.int16))
    image.SetSpacing((0.8, 0.8, 1.5))
    image.SetOrigin((-204.8, -204.8, -225.0))
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def make_bundle(case: Case, folder: Path) -> Path:
    """The case's bundle with random weights (seed 0), saved so that every engine loads the same file."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))        # Testing/ for segment_fixtures
    sys.path.insert(0, str(Path(__file__).resolve().parent))            # bench_network.randomised
    from mednextv2.bundle import Bundle
    from mednextv2.network import MedNeXt, MedNeXtConfig
    from bench_network import randomised
    from segment_fixtures import bundle_spec

    config = MedNeXtConfig.from_dict(case.network)
    spec = bundle_spec(config, patch=case.patch, target_spacing=case.target_spacing, normalization=[CT_NORM],
                       mirror_axes=(0, 1, 2))
    spec.update(id=f"bench-{case.name}", title=f"Engine benchmark ({case.name})")
    if case.importance_map != "mednextv2":
        spec["inference"]["importance_map"] = case.importance_map
    model = banded(randomised(MedNeXt(config), seed=0), CT_NORM)
    return Bundle.create(spec, [model.state_dict()]).save(folder / "model")


def banded(model, norm: dict, bands: int = 11, slope: float = 5.0, gap: float = 4.0, context: float = 0.1):
    """Random weights plus a strong intensity term, so that the labels follow the anatomy and
    most voxels are decided with a margin, as with a trained network (purely random weights label
    almost every voxel with the same class).

    The stem's channel 0 passes the normalised intensity x on; in the head, `bands` classes spread
    over the K get lines slope * (i - centre) * x + b_i that cross at equal steps of the
    intensity range (class i wins in band i: logits within about +-50, a margin of ~0.8 logit
    at a band's centre); every other class copies its nearest active class's line `gap` lower,
    so it is a close runner-up that never wins. The random rest makes each voxel's logits depend
    on its surroundings, so the tile layout and stitching still matter."""
    import torch

    lo, hi = ((c - norm["mean"]) / norm["std"] for c in norm["clip"])
    k = model.out_0.conv_out.bias.shape[0]
    bands = min(bands, k)
    active = np.round(np.linspace(0, k - 1, bands)).astype(int)
    steps = np.linspace(lo, hi, bands + 1)[1:-1]          # where band i-1 hands over to band i
    slopes = slope * (np.arange(bands) - (bands - 1) / 2)
    biases = np.concatenate([[0.0], -np.cumsum(slope * steps)])  # lines i-1 and i cross at steps[i-1]
    with torch.no_grad():
        model.stem.weight[0].fill_(1.0)
        model.stem.bias[0] = 0.0
        # Damp what the random full-resolution residual paths add to channel 0 (x), so that two
        # overlapping tiles agree on a voxel to a fraction of a logit, as a trained network's do.
        for name in ("enc_block_0.0.conv3", "up_0.conv3", "dec_block_0.0.conv3"):
            conv = model.get_submodule(name)
            conv.weight[0] *= context
            conv.bias[0] *= context
        model.up_0.res_conv.weight[:, 0] *= context  # transposed conv: (in, out, ...)
        model.up_0.res_conv.bias[0] *= context
        w, b = model.out_0.conv_out.weight, model.out_0.conv_out.bias
        for c in range(k):
            i = int(np.argmin(np.abs(active - c)))
            w[0, c] += float(slopes[i])
            b[c] = float(biases[i]) - (0.0 if c == active[i] else gap)
    return model


# ---------------------------------------------------------------- measuring inside a child
def rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class StageMonitor:
    """Wall time and largest sampled RSS of each stage (a thread samples VmRSS every 10 ms)."""

    def __init__(self) -> None:
        self.rows: List[dict] = []
        self._stage: Optional[str] = None
        self._start = 0.0
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self._peak = max(self._peak, rss_kib())

    def mark(self, stage: Optional[str]) -> None:
        now = time.monotonic()
        if self._stage is not None:
            self.rows.append({"stage": self._stage, "seconds": now - self._start,
                              "peak_rss_mib": max(self._peak, rss_kib()) / 1024})
        self._stage, self._start, self._peak = stage, now, rss_kib()

    def close(self) -> List[dict]:
        self.mark(None)
        self._stop.set()
        self._thread.join()
        return self.rows


def run_ours(bundle_dir: Path, image_path: Path, out_dir: Path, mon: StageMonitor) -> Path:
    from mednextv2.inference.pipeline import Segmenter
    from mednextv2.process_memory import keep_freed_memory

    keep_freed_memory()  # what the `mednextv2` command does first in its process
    # The pipeline reports each stage's start (fraction 0) except the sliding window, which
    # reports after each tile: it starts when preprocessing reports its end.
    starts = {("preprocess", 0.0): "preprocess", ("preprocess", 1.0): "predict",
              ("postprocess", 0.0): "to input grid", ("export", 0.0): "export"}

    def progress(stage, fraction, message="", eta_s=None, **extra):
        if (stage, fraction) in starts:
            mon.mark(starts[stage, fraction])

    mon.mark("load model")
    segmenter = Segmenter(bundle_dir, device="cpu", tta=False, step=0.5, progress=progress)
    mon.mark("read")
    return segmenter.segment_to_file(image_path, out_dir / "ours.seg.nrrd")


def nnunet_plans(bundle, shape_zyx) -> Tuple[dict, dict]:
    """plans.json / dataset.json equivalents whose preprocessing matches the bundle's."""
    norm = bundle.preprocessing.normalization[0]
    linear = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": list(bundle.inference.patch_size), "median_image_size_in_voxels": list(shape_zyx),
        "spacing": list(bundle.preprocessing.target_spacing), "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": linear,
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": dict(linear, is_seg=True),
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape", "resampling_fn_probabilities_kwargs": linear,
        "architecture": {"network_class_name": "mednextv2.network.MedNeXt", "arch_kwargs": {},
                         "_kw_requires_import": []},
        "batch_dice": False,
    }
    plans = {
        "dataset_name": "Dataset999_Bench", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(bundle.preprocessing.target_spacing),
        "original_median_shape_after_transp": list(shape_zyx), "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "configurations": {"3d_fullres": config},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "mean": norm.mean, "std": norm.std, "percentile_00_5": norm.clip[0], "percentile_99_5": norm.clip[1],
            "min": norm.clip[0], "max": norm.clip[1], "median": norm.mean}},
    }
    labels = {"background": 0}
    labels.update({lab.name: lab.value for lab in bundle.labels})
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nrrd"}
    return plans, dataset


def run_nnunet(bundle_dir: Path, image_path: Path, out_dir: Path, mon: StageMonitor) -> Path:
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from mednextv2.bundle import load_bundle

    mon.mark("load model")
    bundle = load_bundle(bundle_dir)
    network, state = baseline_network(bundle)
    mon.mark("read")
    reader = SimpleITKIO()
    image, props = reader.read_images([str(image_path)])
    plans, dataset = nnunet_plans(bundle, image.shape[1:])
    manager = PlansManager(plans)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"),
                                verbose=False, allow_tqdm=False)
    predictor.manual_initialization(network, manager, manager.get_configuration("3d_fullres"), [state], dataset,
                                    "nnUNetTrainer", None)
    # Instrumentation only: stage marks around the predictor's own steps.
    predict = predictor.predict_logits_from_preprocessed_data

    def timed_predict(data):
        mon.mark("predict")
        out = predict(data)
        mon.mark("to input grid")
        return out

    predictor.predict_logits_from_preprocessed_data = timed_predict
    write_seg = SimpleITKIO.write_seg

    def timed_write(self, seg, output_fname, properties):
        mon.mark("export")
        return write_seg(self, seg, output_fname, properties)

    SimpleITKIO.write_seg = timed_write
    mon.mark("preprocess")
    predictor.predict_single_npy_array(image, props, None, str(out_dir / "nnunet"), False)
    return out_dir / "nnunet.nrrd"


def run_monai(bundle_dir: Path, image_path: Path, out_dir: Path, mon: StageMonitor) -> Path:
    import SimpleITK as sitk
    import torch
    from monai.inferers import sliding_window_inference

    from mednextv2.bundle import load_bundle
    from mednextv2.inference import export, image_io, preprocessing

    mon.mark("load model")
    bundle = load_bundle(bundle_dir)
    model, _ = baseline_network(bundle)
    mon.mark("read")
    image = image_io.read_image(image_path)
    mon.mark("preprocess")
    pre = preprocessing.preprocess([image], bundle.preprocessing)
    record = pre.record
    mon.mark("predict")
    with torch.no_grad():
        logits = sliding_window_inference(torch.from_numpy(pre.data)[None], bundle.inference.patch_size, 1, model,
                                          overlap=0.5, mode="gaussian", sigma_scale=0.125, sw_device="cpu",
                                          device="cpu")
    del pre
    mon.mark("to input grid")
    labels = preprocessing.to_input_grid(logits[0], record)
    del logits
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    mon.mark("export")
    return export.write_result(out, bundle.labels, out_dir / "monai.seg.nrrd")


def baseline_network(bundle):
    """(network, state dict) the baselines run: our MedNeXt class (BASELINE_NET=ours, so only the
    pipelines differ), or the plain literal implementation of the same function and weights
    (=plain: what those engines run with the official-style module, so our network's speed counts too)."""
    from mednextv2.network import MedNeXt

    config = bundle.network.config(deep_supervision=False)
    state = dict(bundle.load_state_dicts()[0])
    if os.environ.get(BASELINE_NET_ENV, "ours") == "plain":
        from plain_mednext import PlainMedNeXt

        network = PlainMedNeXt(config)
    else:
        network = MedNeXt(config)
    network.load_state_dict(state)
    return network.eval(), state


RUNNERS: Dict[str, Callable[..., Path]] = {"ours": run_ours, "nnunet": run_nnunet, "monai": run_monai}


def child(engine: str, bundle_dir: Path, image_path: Path, out_dir: Path, threads: int) -> dict:
    started_imports = time.monotonic()
    import torch

    if threads:  # 0: the engine's own default
        torch.set_num_threads(threads)
    if engine == "nnunet":
        import nnunetv2.inference.predict_from_raw_data  # noqa: F401
    elif engine == "monai":
        import monai.inferers  # noqa: F401
    import mednextv2.inference.pipeline  # noqa: F401
    import_s = time.monotonic() - started_imports
    base = rss_kib()
    load = os.getloadavg()[0]
    mon = StageMonitor()
    t0, cpu0 = time.monotonic(), time.process_time()
    path = RUNNERS[engine](bundle_dir, image_path, out_dir, mon)
    seconds, cpu_s = time.monotonic() - t0, time.process_time() - cpu0
    stages = mon.close()
    return {"engine": engine, "seconds": seconds, "cpu_s": cpu_s, "peak_rss_mib": rss_kib("VmHWM") / 1024,
            "rss_after_imports_mib": base / 1024, "import_s": import_s, "stages": stages, "output": str(path),
            "load_before": load, "load_after": os.getloadavg()[0], "threads": threads}


# ---------------------------------------------------------------- parent
def run_child(engine: str, bundle_dir: Path, image_path: Path, out_dir: Path, threads: int) -> dict:
    env = dict(os.environ, nnUNet_def_n_proc=str(threads or os.cpu_count()),  # its export otherwise sets 8 threads
               nnUNet_raw=str(out_dir), nnUNet_preprocessed=str(out_dir), nnUNet_results=str(out_dir))
    if threads:  # 0: each engine's own default
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--child", engine, "--bundle", str(bundle_dir), "--image", str(image_path),
           "--out-dir", str(out_dir), "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def read_labels(path: str):
    import SimpleITK as sitk

    image = sitk.ReadImage(path)
    return sitk.GetArrayFromImage(image), image


def same_grid(a, b) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))


def run_case(case: Case, image_path: Path, engines, threads: int, work: Path, repeats: int = 1) -> dict:
    import SimpleITK as sitk

    from mednextv2.bundle import load_bundle
    from mednextv2.inference.preprocessing import preprocess
    from mednextv2.inference.sliding_window import tile_grid

    bundle_dir = make_bundle(case, work / case.name)
    reference = sitk.ReadImage(str(image_path))
    net_shape = preprocess([reference], load_bundle(bundle_dir).preprocessing).record.network_shape
    tiles = len(tile_grid([max(s, p) for s, p in zip(net_shape, case.patch)], case.patch, 0.5))
    info = {"case": case.name, "input_size_xyz": list(reference.GetSize()), "input_spacing_xyz": list(reference.GetSpacing()),
            "network_grid_zyx": list(net_shape), "patch_zyx": list(case.patch), "tiles": tiles,
            "classes": case.network["n_classes"], "network": case.network}
    print(f"\n== {case.name}: input {reference.GetSize()} (x y z) at {tuple(round(s, 3) for s in reference.GetSpacing())} mm,"
          f" network grid {net_shape} (z y x), patch {case.patch}, {tiles} tiles, {case.network['n_classes']} classes",
          flush=True)
    del reference
    runs: Dict[str, List[dict]] = {engine: [] for engine in engines}
    for repeat in range(repeats):  # round robin, so that a change of background load hits all engines alike
        for engine in engines:
            out_dir = work / case.name / engine
            out_dir.mkdir(parents=True, exist_ok=True)
            r = run_child(engine, bundle_dir, image_path, out_dir, threads)
            runs[engine].append(r)
            stages = ", ".join(f"{s['stage']} {s['seconds']:.1f}s/{s['peak_rss_mib']:.0f}MiB" for s in r["stages"])
            print(f"  {engine:7s} {r['seconds']:7.1f} s (CPU {r['cpu_s']:.1f} s)  peak RSS {r['peak_rss_mib']:6.0f} MiB "
                  f"(after imports {r['rss_after_imports_mib']:.0f})  load {r['load_before']:.1f}->{r['load_after']:.1f}"
                  f"\n          {stages}", flush=True)
    results = {}
    for engine, rs in runs.items():
        results[engine] = dict(rs[-1], seconds=float(np.median([r["seconds"] for r in rs])),
                               peak_rss_mib=float(np.median([r["peak_rss_mib"] for r in rs])),
                               all_seconds=[r["seconds"] for r in rs], all_peak_rss_mib=[r["peak_rss_mib"] for r in rs],
                               stage_seconds={st["stage"]: float(np.median([
                                   next(x["seconds"] for x in r["stages"] if x["stage"] == st["stage"]) for r in rs]))
                                   for st in rs[-1]["stages"]})
    input_image = sitk.ReadImage(str(image_path))
    ours_labels = None
    if "ours" in results:
        ours_labels, _ = read_labels(results["ours"]["output"])
        info["classes_present_ours"] = int(len(np.unique(ours_labels)))
    for engine, r in results.items():
        labels, image = read_labels(r["output"])
        r["on_input_grid"] = same_grid(image, input_image)
        if ours_labels is not None and engine != "ours":
            r["identical_voxels"] = float(np.mean(labels == ours_labels))
    info["engines"] = results
    return info


def summarize(info: dict) -> dict:
    res = info["engines"]
    ratios = {}
    if "ours" not in res:
        return ratios
    ours = res["ours"]
    for engine in ("nnunet", "monai"):
        if engine in res:
            r = res[engine]
            ratios[engine] = {"time_ratio_them_over_ours": r["seconds"] / ours["seconds"],
                              "peak_rss_ratio_ours_over_them": ours["peak_rss_mib"] / r["peak_rss_mib"],
                              "identical_voxels_pct": 100 * r["identical_voxels"]}
    return ratios


def loads(under_load: bool):
    """(name, a context manager running that load) per load condition: bench_network.py's competitors."""
    if not under_load:
        return [("as found", contextlib.nullcontext())]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_network import COMPETITORS, competing

    return [("idle", contextlib.nullcontext())] + [(name, competing(child)) for name, child in COMPETITORS.items()]


def print_summary(all_cases: List[dict]) -> None:
    print("\nengine   case         seconds  (read+prep  predict  to input grid  export)  peak RSS MiB"
          "  on input grid  identical to ours")
    for info in all_cases:
        for engine, r in info["engines"].items():
            st = r["stage_seconds"]
            same = f"{100 * r['identical_voxels']:.3f}%" if "identical_voxels" in r else "-"
            print(f"{engine:8s} {info['case'] + ' ' + info.get('load', ''):12s} {r['seconds']:7.1f}  ({st.get('read', 0) + st.get('preprocess', 0):10.1f}"
                  f" {st.get('predict', 0):8.1f} {st.get('to input grid', 0):14.1f} {st.get('export', 0):7.1f})"
                  f" {r['peak_rss_mib']:13.0f} {str(r['on_input_grid']):>14s}  {same:>16s}")
    print("\nratios (goals: nnU-Net time / ours >= 2; our peak RSS / nnU-Net's <= 0.3 on the 44-class lung CT;"
          " identical >= 99.9%)")
    for info in all_cases:
        for engine, q in info["ratios"].items():
            print(f"  {info['case'] + ' ' + info.get('load', ''):12s} vs {engine:7s} time {q['time_ratio_them_over_ours']:5.2f}x   "
                  f"peak RSS ours/them {q['peak_rss_ratio_ours_over_them']:5.2f}   "
                  f"identical {q['identical_voxels_pct']:.3f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=("lung", "lung44", "lung44-native", "synthetic44"), default=["lung", "synthetic44"])
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    # One thread by default: on a shared 2-core box, two OpenMP threads spin-wait on each other whenever
    # another process holds a core, and the same tiles then take 5 s or 100 s (measured), which
    # swamps every difference between the engines. Each engine gets the same setting.
    parser.add_argument("--threads", type=int, default=1, help="torch threads per engine (default 1)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per engine (round robin); medians reported")
    parser.add_argument("--synthetic-size", type=int, nargs=3, default=[512, 512, 300], metavar=("X", "Y", "Z"))
    parser.add_argument("--lung", type=Path, default=DATA / "ct-lung" / "lung1_image.nrrd")
    parser.add_argument("--workdir", type=Path, help="keep inputs/outputs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--baseline-network", choices=("ours", "plain"), default="ours",
                        help="network class inside nnU-Net and MONAI: ours (pipelines alone compared) or the plain "
                             "literal implementation (each engine with its own network code)")
    parser.add_argument("--under-load", action="store_true",
                        help="idle and beside each competitor of bench_network.py; engines use their default threads")
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--bundle", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.bundle, args.image, args.out_dir, args.threads)))
        return
    import importlib.util

    missing = [pkg for engine, pkg in (("nnunet", "nnunetv2"), ("monai", "monai"))
               if engine in args.engines and importlib.util.find_spec(pkg) is None]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not importable by {sys.executable}: run this with the benchmark "
                         "venv's python (install notes at the top of this file), or leave those engines out")
    if any(c.startswith("lung") for c in args.cases) and not args.lung.is_file():
        raise SystemExit(f"lung CT not found: {args.lung} (set MEDNEXTV2_DATA to a real data folder)")
    import torch

    os.environ[BASELINE_NET_ENV] = args.baseline_network  # the children read it
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
               "python": platform.python_version(), "load_at_start": os.getloadavg(),
               "threads": "each engine's default" if args.under_load else args.threads,
               "baseline_network": args.baseline_network}
    print(f"{machine['platform']}, {machine['cpus']} CPUs, torch {machine['torch']}, {machine['threads']} torch thread(s)"
          f" per engine, load {machine['load_at_start'][0]:.1f}, baselines run the {args.baseline_network} network")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        all_cases = []
        for name in args.cases:
            case = cases()[name]
            if name.startswith("lung"):
                image_path = args.lung
            else:
                size = tuple(args.synthetic_size)
                image_path = work / f"synthetic_{'x'.join(map(str, size))}.nrrd"
                if not image_path.exists():
                    synthetic_ct(size, image_path)
            for load, running in loads(args.under_load):
                with running:
                    info = run_case(case, image_path, args.engines, 0 if args.under_load else args.threads, work,
                                    args.repeats)
                info.update(load=load, ratios=summarize(info))
                all_cases.append(info)
    print_summary(all_cases)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "cases": all_cases}, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
