"""The trained model as a bundle (docs/architecture.md), with provenance, metrics and curves.

Bundles are shared, so nothing in them names a place on the training machine: the dataset is
recorded by its folder name and a content hash (`dataset_digest`), never by its path.
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import torch

from mednextv2 import __version__
from mednextv2.atomic import copy_file, recover_swaps, sha256_file
from mednextv2.bundle import (BUNDLE_REPORTS, Bundle, BundleSpec, Channel, NetworkSpec, Provenance, foreign_entries,
                              is_complete_bundle)
from mednextv2.errors import InputError
from mednextv2.inference.image_io import check_can_create_files
from mednextv2.output_guard import resolved, same_path
from mednextv2.safezip import safe_extract_zip
from mednextv2.schema import model_id_problem
from mednextv2.train import checkpoint
from mednextv2.train.planning import TrainingPlan

log = logging.getLogger(__name__)

DEEP_SUPERVISION_HEADS = ("out_1.", "out_2.", "out_3.", "out_4.")
# What a work folder holds (run.PLAN_FILE, the checkpoints, the reports, the cache) and the
# hidden temporaries of their atomic writes.
WORK_LOCK = ".train.lock"  # held by the run using the folder (run._lock_work_folder)
WORK_ENTRIES = frozenset({"plan.json", checkpoint.LATEST, checkpoint.BEST, "cache", WORK_LOCK, *BUNDLE_REPORTS})
_WORK_TEMPORARY = re.compile(r"^\.(plan|checkpoint_latest|checkpoint_best|metrics|training_curve)\..*tmp")


def _listing(names) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _inside(path: Path, folder: Path) -> bool:
    path, folder = resolved(path), resolved(folder)
    return path == folder or folder in path.parents


def recover_interrupted_swap(output: Path) -> None:
    """Finish or undo the bundle folder swap of a run killed while it replaced -o (logged)."""
    if output.suffix.lower() != ".zip":
        recover_swaps(output, is_complete_bundle)


def check_destinations(output: Path, work: Path, dataset: Path, base: Optional[str] = None) -> None:
    """Before any work: -o is missing, empty, or a bundle the engine wrote (by content,
    `bundle.foreign_entries`); the work folder holds only the engine's files; neither is, holds or
    lies in the dataset or the base model. Nothing the engine did not create is ever replaced,
    and no input is (docs/promise.md)."""
    for what, path in (("-o", output), ("work folder", work), ("the dataset", dataset)):
        resolved(path, what)
    if same_path(output, dataset) or _inside(dataset, output) or _inside(output, dataset):
        raise InputError(f"-o {output} and the dataset {dataset} must be separate (the bundle replaces its "
                         "folder); give a new folder for the model outside the dataset")
    base_path = _base_path(base) if base else None
    if base_path is not None and (same_path(output, base_path) or _inside(base_path, output)
                                  or _inside(output, base_path)):
        raise InputError(f"-o {output} is the base model --base {base} ({base_path}), an input that the new "
                         "bundle would replace; give a new folder or file name for the model")
    if output.suffix.lower() == ".zip":
        if output.exists():
            foreign = _zip_foreign_entries(output)
            if foreign:
                raise InputError(f"-o {output} exists and is not a model bundle zip an earlier `train` wrote "
                                 f"(first foreign entry: {foreign[0]}); give a new file name")
    elif output.exists():
        if not output.is_dir():
            raise InputError(f"-o {output} exists and is not a folder; give a new folder for the model")
        foreign = foreign_entries(output)
        if foreign:
            raise InputError(f"-o {output} holds files that are not a model bundle's ({_listing(foreign)}); "
                             "give a new or empty folder, or a bundle folder an earlier `train` wrote")
    check_can_create_files(output.parent, f"-o {output}")
    check_can_create_files(work.parent, f"work folder {work}")
    if _inside(work, output) or _inside(output, work):
        raise InputError(f"work folder {work} and -o {output} must be separate folders")
    if _inside(work, dataset) or _inside(dataset, work):
        raise InputError(f"work folder {work} and the dataset {dataset} must be separate folders")
    if work.is_dir():
        foreign = [n for n in sorted(os.listdir(work)) if n not in WORK_ENTRIES and not _WORK_TEMPORARY.match(n)]
        if foreign:
            raise InputError(f"work folder {work} holds files the engine did not write ({_listing(foreign)}); "
                             "give another --work-dir")
    elif work.exists():
        raise InputError(f"work folder {work} exists and is not a folder; give another --work-dir")


def first_missing(path: Path) -> Optional[Path]:
    """The outermost folder of `path` (itself included) that does not exist yet; None if it exists."""
    missing = None
    for folder in (path, *path.absolute().parents):
        if folder.exists():
            return missing
        missing = folder
    return missing


def discard_unused_work(work: Path, created: Path) -> None:
    """After a refusal, remove the work folder this run created (and the empty parents it made,
    up to `created`) while it holds no checkpoint, only the plan and the cache, both rebuilt from
    the dataset, and the run's lock file (released by the caller first): a refusal writes nothing."""
    if not work.is_dir() or any((work / name).exists() for name in (checkpoint.LATEST, checkpoint.BEST)):
        return
    if not all(n in ("plan.json", "cache", WORK_LOCK) or _WORK_TEMPORARY.match(n) for n in os.listdir(work)):
        return
    shutil.rmtree(work, ignore_errors=True)
    created = created.absolute()
    for folder in work.absolute().parents:
        if created != folder and created not in folder.parents:
            break
        try:
            folder.rmdir()  # only when empty
        except OSError:
            break


def _base_path(base: str) -> Path:
    """Where the --base model lies: its path, or its folder in the model cache for a model id."""
    path = Path(base).expanduser()
    resolved(path, "model")  # a symbolic link loop is not "not found", nor a model id
    if path.exists() or model_id_problem(base) is not None:
        return path
    from mednextv2.store.cache import ModelCache

    return ModelCache.open().model_dir(base)


def _zip_foreign_entries(path: Path) -> List[str]:
    """`bundle.foreign_entries` of a bundle zip (entries at its root, as `train` writes them)."""
    try:
        with tempfile.TemporaryDirectory(prefix="mednextv2-check-") as tmp:
            safe_extract_zip(path, Path(tmp))
            return foreign_entries(Path(tmp))
    except InputError as e:
        return [f"{path.name} ({str(e).splitlines()[0]})"]


def bundle_id(output: Path) -> str:
    """A valid model id from the output name (lower-case, see validation.MODEL_ID_PATTERN)."""
    stem = output.name[:-4] if output.name.lower().endswith(".zip") else output.name
    slug = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")[:64].rstrip("-._")
    return slug if slug and model_id_problem(slug) is None else "trained-model"


def dataset_digest(cases: Sequence) -> str:
    """SHA-256 over the cases' files (name, then content digest, in case order): the same data
    gives the same digest wherever it lies."""
    digest = hashlib.sha256()
    for case in cases:
        for path in (*case.images, case.label):
            digest.update(f"{case.name}/{Path(path).name}:{sha256_file(path)}\n".encode("utf-8"))
    return digest.hexdigest()


def inference_state(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Weights without the deep-supervision heads (segmentation uses the full-resolution one only)."""
    return {k: v for k, v in state.items() if not k.startswith(DEEP_SUPERVISION_HEADS)}


def bundle_spec(output: Path, plan: TrainingPlan, metrics: dict, training: dict, title: Optional[str] = None) -> BundleSpec:
    """The model.json of a trained model. `training["dataset"]` is the dataset's folder name."""
    return BundleSpec(
        id=bundle_id(output),
        title=title or _title(plan),
        description=_description(plan, metrics, training),
        network=NetworkSpec.from_json(dict(plan.network, deep_supervision=False)),
        labels=plan.bundle_labels(),
        channels=tuple(Channel.from_json(c) for c in plan.channels),
        preprocessing=plan.preprocessing_plan(),
        inference=plan.inference_defaults(),
        provenance=Provenance(base_model=plan.base_model, training_data=training["dataset"], metrics=metrics,
                              date=datetime.date.today().isoformat(), training=dict(training, mednextv2=__version__)),
    )


def _title(plan: TrainingPlan) -> str:
    how = f"fine-tuned from {plan.base_model}" if plan.base_model else "trained from scratch"
    return f"MedNeXt-v2 {how}: {', '.join(s.name for s in plan.labels)}"


def _description(plan: TrainingPlan, metrics: dict, training: dict) -> str:
    """What is true of this model: how it started, on what, and its validation (or that it had none)."""
    start = f"fine-tuned from {plan.base_model}" if plan.base_model else \
        f"trained from scratch ({training.get('preset') or 'planned network'})"
    dice = metrics.get("dice") or {}
    if dice:
        scores = ", ".join(f"{name} {value:.3f}" if value is not None else f"{name} undefined"
                           for name, value in dice.items())
        held_out = len(metrics.get("validation_cases") or ())
        validation = f"validation Dice on {held_out} held-out case(s): {scores}"
    else:
        validation = "no held-out validation (every case was trained on), so no Dice is recorded"
    return (f"{start[0].upper()}{start[1:]} with `mednextv2 train` on {training['n_train_cases']} case(s) of "
            f"{training['dataset']}; {validation}.")


def write_bundle(output: Path, plan: TrainingPlan, state: Mapping[str, torch.Tensor], metrics: dict,
                 training: dict, title: Optional[str] = None) -> Path:
    bundle = Bundle.create(bundle_spec(output, plan, metrics, training, title), [inference_state(state)])
    return bundle.save(output)


def attach_reports(output: Path, work: Path) -> None:
    """Copy metrics.csv and the curve PNG into a bundle folder (a zip bundle keeps them in the work folder)."""
    if not output.is_dir():
        return
    for name in BUNDLE_REPORTS:
        if (work / name).exists():
            copy_file(work / name, output / name)
