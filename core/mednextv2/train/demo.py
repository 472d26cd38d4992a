"""`mednextv2 demo`: train a small MedNeXt-v2 on a real labeled MR scan, segment held-out anatomy.

The data ship inside the package (data/brain-tissue, see its README for provenance and licence):
the ICBM 2009a T1 template with its grey/white-matter map at 2 mm. The template is left-right
symmetric, so a left/right split would leak the answer; the scan is cut front to back instead:
the model learns on the posterior 60% of the brain and segments the anterior 40%, anatomy it
has never seen (frontal lobes vs occipital/parietal lobes and cerebellum).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from mednextv2.atomic import atomic_path
from mednextv2.bundle import load_bundle
from mednextv2.errors import InputError
from mednextv2.inference import export
from mednextv2.progress import make_progress
from mednextv2.train import checkpoint
from mednextv2.train.evaluate import dice_per_class
from mednextv2.train.options import TrainOptions
from mednextv2.train.run import run_training

log = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parents[1] / "data" / "brain-tissue"
T1, TISSUE = "icbm152_2009a_t1_2mm.nii.gz", "icbm152_2009a_tissue_2mm.nii.gz"
LABELS = {1: "grey matter", 2: "white matter"}
TRAIN_FRACTION = 0.6  # posterior part of the brain's front-to-back extent used for training
DEMO_PATCH = (32, 32, 32)  # 64 mm of context at 2 mm: a CPU step is ~0.1-0.2 s
DEMO_LR = 3e-3  # a short schedule (a few hundred steps) needs a higher peak than the 1e-3 of long runs


@dataclass(frozen=True)
class DemoResult:
    dice: Dict[str, float]
    seconds: Dict[str, float]
    segmentation: Path
    overlay: Path
    bundle: Path


def _front_to_back_axis(image: sitk.Image) -> Tuple[int, bool]:
    """Index axis (x=0, y=1, z=2) closest to the world A-P axis, and whether increasing index goes posterior."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    axis = int(np.argmax(np.abs(direction[1])))  # row 1 = LPS world y (posterior +)
    return axis, bool(direction[1, axis] > 0)


def split_scan(folder: Path, image_path: Path = DATA / T1, label_path: Path = DATA / TISSUE,
               list_heldout: bool = False) -> Tuple[Path, Path, Path]:
    """Write the training part (posterior) and the held-out part (anterior) of the scan; returns
    (dataset.json, held-out image, held-out label). `list_heldout` also lists the anterior case in
    dataset.json (named "anterior") so that training can validate on it."""
    image, label = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(label_path))
    axis, posterior_up = _front_to_back_axis(image)
    mask = sitk.GetArrayViewFromImage(label) > 0
    extent = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != 2 - axis)))
    lo, hi = int(extent[0]), int(extent[-1]) + 1
    size = image.GetSize()[axis]
    if posterior_up:
        cut = hi - int(round(TRAIN_FRACTION * (hi - lo)))
        parts = {"posterior": (cut, size), "anterior": (0, cut)}
    else:
        cut = lo + int(round(TRAIN_FRACTION * (hi - lo)))
        parts = {"posterior": (0, cut), "anterior": (cut, size)}
    folder.mkdir(parents=True, exist_ok=True)
    for name, (start, stop) in parts.items():
        index = [slice(None)] * 3
        index[axis] = slice(start, stop)
        sitk.WriteImage(image[tuple(index)], str(folder / f"{name}_image.nii.gz"), True)
        sitk.WriteImage(label[tuple(index)], str(folder / f"{name}_label.nii.gz"), True)
    dataset = folder / "dataset.json"
    names = ["posterior", "anterior"] if list_heldout else ["posterior"]
    cases = [{"name": n, "image": f"{n}_image.nii.gz", "label": f"{n}_label.nii.gz"} for n in names]
    dataset.write_text(json.dumps({"labels": {str(k): v for k, v in LABELS.items()}, "channels": ["MR"],
                                   "cases": cases}, indent=1))
    return dataset, folder / "anterior_image.nii.gz", folder / "anterior_label.nii.gz"


def _rgb_slice(image: np.ndarray, labels: np.ndarray, colors: Dict[int, Tuple[int, int, int]]) -> np.ndarray:
    lo, hi = np.percentile(image, (1, 99))
    gray = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    rgb = np.repeat(gray[..., None], 3, axis=2)
    for value, color in colors.items():
        hit = labels == value
        rgb[hit] = 0.55 * rgb[hit] + 0.45 * np.array(color, dtype=float)
    return rgb.astype(np.uint8)


def write_overlay(image: sitk.Image, prediction: sitk.Image, reference: sitk.Image,
                  colors: Dict[int, Tuple[int, int, int]], path: Path) -> Path:
    """PNG: middle axial slice, prediction (left) beside the reference (right). SimpleITK writes it,
    so no plotting library is needed."""
    img = sitk.GetArrayFromImage(image).astype(np.float32)
    pred, ref = sitk.GetArrayFromImage(prediction), sitk.GetArrayFromImage(reference)
    z = int(np.argmax((ref > 0).sum(axis=(1, 2))))  # the axial slice with the most tissue
    panels = [_rgb_slice(img[z], pred[z], colors), np.full((img.shape[1], 4, 3), 255, np.uint8),
              _rgb_slice(img[z], ref[z], colors)]
    rgb = np.concatenate(panels, axis=1)
    rgb = np.repeat(np.repeat(rgb, 3, axis=0), 3, axis=1)[::-1]  # 2 mm voxels: enlarge; anterior up
    out = sitk.GetImageFromArray(np.ascontiguousarray(rgb), isVector=True)
    with atomic_path(path) as tmp:
        sitk.WriteImage(out, str(tmp))
    return path


BUNDLE_NAME, WORK_NAME = "brain-tissue-model", "training"


def demo_folder(out_dir: Path) -> Tuple[Path, bool]:
    """Where this demo runs and whether it resumes: a new or empty `out_dir`; the same folder when
    an earlier demo there was interrupted (a checkpoint, no model yet); else the first free
    `out_dir-2`, `out_dir-3`, ... (an earlier demo's results, or anything else, stay as they are)."""
    out_dir = Path(out_dir)
    candidates = [out_dir] + [out_dir.with_name(f"{out_dir.name}-{i}") for i in range(2, 1000)]
    for folder in candidates:
        if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
            return folder, False
        interrupted = ((folder / WORK_NAME / checkpoint.LATEST).is_file() and (folder / "data" / "dataset.json").is_file()
                       and not (folder / BUNDLE_NAME / "model.json").exists())
        if interrupted:
            return folder, True
    raise InputError(f"{out_dir} and {len(candidates) - 1} numbered folders beside it are taken; give another -o")


def run_demo(out_dir: Path, minutes: float = 5.0, device: str = "auto", progress: str = "bar", seed: int = 0,
             tta: bool = False, echo: Callable[[str], None] = print, threads: Optional[int] = None) -> DemoResult:
    from mednextv2.inference.pipeline import segment

    if minutes <= 0:
        raise InputError(f"--minutes must be positive, got {minutes}")
    if not (DATA / T1).is_file():
        raise InputError(f"the demo data are missing from the installed package ({DATA}); reinstall mednextv2")
    requested = Path(out_dir)
    out_dir, resume = demo_folder(requested)
    times: Dict[str, float] = {}
    t0 = time.monotonic()
    if resume:
        echo(f"resuming the interrupted demo in {out_dir} (its data split and checkpoint are kept)")
        dataset = out_dir / "data" / "dataset.json"
        test_image, test_label = out_dir / "data" / "anterior_image.nii.gz", out_dir / "data" / "anterior_label.nii.gz"
    else:
        if out_dir != requested:
            echo(f"{requested} holds an earlier demo (or other files), left as it is; this demo writes to {out_dir}")
        dataset, test_image, test_label = split_scan(out_dir / "data")
    times["prepare"] = time.monotonic() - t0
    echo(f"training a MedNeXt-v2 v2-tiny on the posterior brain for {minutes:g} min (CPU is fine) ...")
    t1 = time.monotonic()
    bundle_path = out_dir / BUNDLE_NAME
    result = run_training(TrainOptions(
        dataset=str(dataset), output=str(bundle_path), preset="v2-tiny", minutes=minutes, patch=DEMO_PATCH,
        device=device, val_fraction=0.0, seed=seed, progress=progress, lr=DEMO_LR, resume=resume,
        work_dir=str(out_dir / WORK_NAME), title="Brain tissue (MR T1), mednextv2 demo", threads=threads))
    times["train"] = time.monotonic() - t1
    t2 = time.monotonic()
    prediction = segment(str(test_image), str(result.bundle), device=device, tta=tta,
                         progress=make_progress("none"), threads=threads)
    times["segment"] = time.monotonic() - t2
    reference = sitk.ReadImage(str(test_label))
    pred_arr, ref_arr = sitk.GetArrayViewFromImage(prediction), sitk.GetArrayViewFromImage(reference)
    scores = dice_per_class(pred_arr, ref_arr, len(LABELS) + 1)
    dice = {LABELS[v]: scores[v - 1] for v in LABELS}
    labels = load_bundle(result.bundle).labels
    seg_path = export.write_result(prediction, labels, out_dir / "anterior_prediction.seg.nrrd")
    overlay = write_overlay(sitk.ReadImage(str(test_image)), prediction, reference,
                            {lab.value: lab.color for lab in labels}, out_dir / "anterior_overlay.png")
    times["total"] = time.monotonic() - t0
    echo("held-out anterior brain, Dice: " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()))
    echo("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
         + f" ({result.epochs} epochs)")
    echo(f"wrote {seg_path} (open in 3D Slicer with {test_image.name}), {overlay} (left: model, right: reference), "
         f"model bundle {result.bundle}")
    return DemoResult(dice, times, seg_path, overlay, Path(result.bundle))
