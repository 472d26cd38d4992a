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
import zipfile
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

import torch

from mednextv2 import __version__
from mednextv2.atomic import copy_file, sha256_file
from mednextv2.bundle import (BUNDLE_REPORTS, MODEL_JSON, Bundle, BundleSpec, Channel, NetworkSpec, Provenance,
                              foreign_entries)
from mednextv2.errors import InputError
from mednextv2.output_guard import resolved, same_path
from mednextv2.train import checkpoint
from mednextv2.train.planning import Plan
from mednextv2.validation import model_id_problem

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


def check_destinations(output: Path, work: Path, dataset: Path) -> None:
    """Before any work: -o is missing, empty, or a bundle the engine wrote; the work folder holds
    only the engine's files; neither is, holds or lies in the dataset. Nothing the engine did not
    create is ever replaced (docs/promise.md)."""
    for what, path in (("-o", output), ("work folder", work), ("the dataset", dataset)):
        resolved(path, what)
    if same_path(output, dataset) or _inside(dataset, output) or _inside(output, dataset):
        raise InputError(f"-o {output} and the dataset {dataset} must be separate (the bundle replaces its "
                         "folder); give a new folder for the model outside the dataset")
    if output.suffix.lower() == ".zip":
        if output.exists() and not _is_bundle_zip(output):
            raise InputError(f"-o {output} exists and is not a model bundle zip; give a new file name")
    elif output.exists():
        if not output.is_dir():
            raise InputError(f"-o {output} exists and is not a folder; give a new folder for the model")
        foreign = foreign_entries(output)
        if foreign:
            raise InputError(f"-o {output} holds files that are not a model bundle's ({_listing(foreign)}); "
                             "give a new or empty folder, or a bundle folder an earlier `train` wrote")
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


def _is_bundle_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n == MODEL_JSON or n.endswith("/" + MODEL_JSON) for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


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


def bundle_spec(output: Path, plan: Plan, metrics: dict, training: dict, title: Optional[str] = None) -> BundleSpec:
    """The model.json of a trained model. `training["dataset"]` is the dataset's folder name."""
    return BundleSpec(
        id=bundle_id(output),
        title=title or f"MedNeXt-v2 fine-tuned: {', '.join(s.name for s in plan.labels)}",
        description=(f"Trained with `mednextv2 train` on {training['n_train_cases']} case(s) of "
                     f"{training['dataset']}" + (f", starting from {plan.base_model}" if plan.base_model else "")
                     + f"; validation Dice {metrics.get('dice', {})}."),
        network=NetworkSpec.from_json(dict(plan.network, deep_supervision=False)),
        labels=plan.bundle_labels(),
        channels=tuple(Channel.from_json(c) for c in plan.channels),
        preprocessing=plan.preprocessing_plan(),
        inference=plan.inference_defaults(),
        provenance=Provenance(base_model=plan.base_model, training_data=training["dataset"], metrics=metrics,
                              date=datetime.date.today().isoformat(), training=dict(training, mednextv2=__version__)),
    )


def write_bundle(output: Path, plan: Plan, state: Mapping[str, torch.Tensor], metrics: dict,
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
