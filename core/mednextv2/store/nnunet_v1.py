"""nnU-Net v1 results folders (the official MedNeXt code's trainings) as importable models.

A v1 trainer folder holds `plans.pkl` and `fold_*/model_final_checkpoint.model` (+ `.model.pkl`):

    <results>/nnUNet/3d_fullres/TaskNNN_Name/nnUNetTrainerV2_MedNeXt_L_kernel3__nnUNetPlansv2.1_trgSp_1x1x1/

The pickles are read with `safe_pickle` (plain data only) and the checkpoints with
`torch.load(weights_only=True)`. The plan is translated into the form of nnU-Net v2's
plans.json and dataset.json, and the v2 conversion does the rest, so both versions give the
same kind of bundle. v1 reads images with SimpleITK (our z, y, x) and applies transpose_forward.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple

from mednextv2.errors import InputError
from mednextv2.store.nnunet_v2 import convert_results, read_json
from mednextv2.store.safe_pickle import load_data_pickle

log = logging.getLogger(__name__)

V1_CHECKPOINT = "model_final_checkpoint.model"
V1_PLANS = "plans.pkl"
_CONFIGURATIONS = ("3d_fullres", "3d_lowres", "3d_cascade_fullres")
_SCHEMES = {"CT": "CTNormalization", "nonCT": "ZScoreNormalization", "noNorm": "NoNormalization"}
# What v1 does unless its plan says otherwise: GenericPreprocessor resamples images with a cubic
# spline (order 3, nearest across anisotropic slices); the export resamples softmax linearly.
_DATA_RESAMPLING = {"order": 3, "order_z": 0, "force_separate_z": None}


def is_v1_results(path: Path) -> bool:
    return (path / V1_PLANS).is_file() and any(p.is_dir() for p in path.glob("fold_*"))


def task_name(folder: Path) -> str:
    """"TaskNNN_Name" above the trainer folder, or the trainer folder's own name."""
    return folder.parent.name if folder.parent.name.startswith("Task") else folder.name


def default_id_name(folder: Path) -> str:
    return re.sub(r"^Task\d+_", "", task_name(folder))


def configuration_of(folder: Path, configuration: Optional[str]) -> str:
    """The configuration given, else the folder's place in the v1 results tree, else 3d_fullres."""
    name = configuration or (folder.parent.parent.name if folder.parent.parent.name in _CONFIGURATIONS else "3d_fullres")
    if name not in _CONFIGURATIONS:
        raise InputError(f"{folder}: nnU-Net v1 configuration {name!r} cannot be imported; MedNeXt bundles are 3D "
                         f"({', '.join(_CONFIGURATIONS)})")
    return name


def read_v1(folder: Path, configuration: Optional[str], dataset_json: Optional[Path],
            checkpoint: str) -> Tuple[dict, dict, str, Optional[str]]:
    """(dataset.json-like dict, plans.json-like dict, configuration name, trainer name) for a v1 folder."""
    where = folder / V1_PLANS
    plans = load_data_pickle(where)
    if not isinstance(plans, Mapping) or not isinstance(plans.get("plans_per_stage"), Mapping):
        raise InputError(f"{where}: not an nnU-Net v1 plan (no 'plans_per_stage')")
    trainer, stage = _trainer_info(folder, checkpoint)
    name = configuration_of(folder, configuration)
    stages = sorted(int(s) for s in plans["plans_per_stage"])
    if stage is None:
        stage = stages[0] if name == "3d_lowres" else stages[-1]  # v1: fullres trains on the last stage
    if stage not in stages:
        raise InputError(f"{where}: no stage {stage}; it has {stages}")
    stage_plan = plans["plans_per_stage"][stage]
    modalities = _indexed(plans.get("modalities") or plans.get("dataset_properties", {}).get("modalities"), where, "modalities")
    schemes = _indexed(plans.get("normalization_schemes"), where, "normalization_schemes")
    unknown = [s for s in schemes if s not in _SCHEMES]
    if unknown:
        raise InputError(f"{where}: normalization scheme(s) {unknown} are not supported ({', '.join(_SCHEMES)} are)")
    masks = _indexed(plans.get("use_mask_for_norm") or {i: False for i in range(len(schemes))}, where, "use_mask_for_norm")
    intensity = (plans.get("dataset_properties") or {}).get("intensityproperties") or {}
    stats = {str(i): {"mean": p.get("mean"), "std": p.get("sd"), "percentile_00_5": p.get("percentile_00_5"),
                      "percentile_99_5": p.get("percentile_99_5")}
             for i, p in intensity.items() if isinstance(p, Mapping)}
    export = plans.get("segmentation_export_params") or {}
    conf = {
        "spacing": [float(s) for s in stage_plan["current_spacing"]],
        "patch_size": [int(p) for p in stage_plan["patch_size"]],
        "normalization_schemes": [_SCHEMES[s] for s in schemes],
        "use_mask_for_norm": [bool(m) for m in masks],
        "resampling_fn_data_kwargs": dict(_DATA_RESAMPLING),
        "resampling_fn_probabilities_kwargs": {"order": int(export.get("interpolation_order", 1)),
                                               "order_z": int(export.get("interpolation_order_z", 0)),
                                               "force_separate_z": export.get("force_separate_z")},
    }
    conf["normalize_first"] = False  # v1's GenericPreprocessor resamples, then normalizes
    conf["softmax_first"] = True  # v1's export resamples softmax probabilities, v2's resamples logits
    v2_plans = {"dataset_name": task_name(folder), "image_reader_writer": "SimpleITKIO",
                "transpose_forward": [int(t) for t in plans.get("transpose_forward", [0, 1, 2])],
                "configurations": {name: conf}, "foreground_intensity_properties_per_channel": stats}
    dataset = _dataset(folder, dataset_json, modalities, int(plans.get("num_classes", 0)))
    return dataset, v2_plans, name, trainer


def _trainer_info(folder: Path, checkpoint: str) -> Tuple[Optional[str], Optional[int]]:
    """Trainer class name and stage from the first fold's `<checkpoint>.pkl` (read as plain data), if any."""
    for info_path in sorted(folder.glob(f"fold_*/{checkpoint}.pkl")):
        info = load_data_pickle(info_path)
        if not isinstance(info, Mapping):
            raise InputError(f"{info_path}: expected the dict nnUNetTrainer.save_checkpoint writes")
        init = info.get("init")
        stage = init[5] if isinstance(init, (list, tuple)) and len(init) > 5 and isinstance(init[5], int) else None
        return (str(info["name"]) if info.get("name") else None), stage
    return None, None


def _indexed(value: Any, where: Path, key: str) -> List[Any]:
    """A v1 per-channel dict {0: x, 1: y} (or a list) as a list in channel order."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if not isinstance(value, Mapping) or not value:
        raise InputError(f"{where}: '{key}' must map channel indices to values, got {value!r}")
    try:
        keys = sorted(value, key=int)
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: '{key}' keys must be channel indices, got {list(value)}") from e
    return [value[k] for k in keys]


def _dataset(folder: Path, given: Optional[Path], modalities: List[Any], n_labels: int) -> dict:
    """Label and channel names: --dataset-json, else a dataset.json in or beside the folder, else label_1..n."""
    candidates = [Path(given).expanduser()] if given else [folder / "dataset.json", folder.parent / "dataset.json"]
    for path in candidates:
        if path.is_file() or given:
            data = read_json(path)
            data.setdefault("modality", {str(i): str(m) for i, m in enumerate(modalities)})
            return data
    labels = {"background": 0, **{f"label_{i}": i for i in range(1, n_labels + 1)}}
    log.warning("%s: no dataset.json in or beside the folder, so the labels are named label_1..label_%d. To name them, "
                "import again with --dataset-json <the raw TaskNNN folder>/dataset.json (and --replace)",
                folder, n_labels)
    return {"labels": labels, "modality": {str(i): str(m) for i, m in enumerate(modalities)}}


def convert_nnunet_v1(folder: Path, model_id: str, *, folds=None, configuration: Optional[str] = None,
                      checkpoint: Optional[str] = None, grn_norm: Optional[str] = None,
                      dataset_json: Optional[Path] = None, progress=None):
    """An in-memory bundle from an nnU-Net v1 trainer folder whose network is a MedNeXt."""
    checkpoint = checkpoint or V1_CHECKPOINT
    dataset, plans, name, trainer = read_v1(folder, configuration, dataset_json, checkpoint)
    return convert_results(folder, model_id, dataset, plans, folds=folds, configuration=name, checkpoint=checkpoint,
                           grn_norm=grn_norm, progress=progress, source="nnU-Net v1", trainer_name=trainer)

