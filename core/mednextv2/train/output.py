"""The trained model as a bundle (docs/architecture.md), with provenance, metrics and curves."""
from __future__ import annotations

import datetime
import logging
import re
import shutil
from pathlib import Path
from typing import Dict, Mapping, Optional

import torch

from mednextv2 import __version__
from mednextv2.bundle import Bundle
from mednextv2.train.planning import Plan

log = logging.getLogger(__name__)

DEEP_SUPERVISION_HEADS = ("out_1.", "out_2.", "out_3.", "out_4.")


def bundle_id(output: Path) -> str:
    stem = output.name[:-4] if output.name.lower().endswith(".zip") else output.name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")
    return slug or "trained-model"


def inference_state(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Weights without the deep-supervision heads (segmentation uses the full-resolution one only)."""
    return {k: v for k, v in state.items() if not k.startswith(DEEP_SUPERVISION_HEADS)}


def write_bundle(output: Path, plan: Plan, state: Mapping[str, torch.Tensor], metrics: dict,
                 training: dict, title: Optional[str] = None) -> Path:
    network = dict(plan.network, deep_supervision=False)
    spec = {
        "format_version": 1,
        "id": bundle_id(output),
        "title": title or f"MedNeXt-v2 fine-tuned: {', '.join(s.name for s in plan.labels)}",
        "description": (f"Trained with `mednextv2 train` on {training['n_train_cases']} case(s) of "
                        f"{training['dataset']}" + (f", starting from {plan.base_model}" if plan.base_model else "")
                        + f"; validation Dice {metrics.get('dice', {})}."),
        "network": network,
        "labels": plan.label_entries(),
        "channels": [dict(c) for c in plan.channels],
        "preprocessing": plan.preprocessing(),
        "inference": plan.inference(),
        "provenance": {"base_model": plan.base_model, "training_data": training["dataset"],
                       "metrics": metrics, "date": datetime.date.today().isoformat(),
                       "training": dict(training, mednextv2=__version__)},
    }
    bundle = Bundle.create(spec, [inference_state(state)])
    return bundle.save(output)


def attach_reports(output: Path, work: Path) -> None:
    """Copy metrics.csv and the curve PNG into a bundle folder (a zip bundle keeps them in the work folder)."""
    if not output.is_dir():
        return
    for name in ("metrics.csv", "training_curve.png"):
        if (work / name).exists():
            shutil.copyfile(work / name, output / name)
