"""nnU-Net v2 results (`dataset.json`, `plans.json`, `fold_*/checkpoint_final.pth`, as
`nnUNetv2_train` writes them or `nnUNetv2_export_model_to_zip` packs them) whose network is a MedNeXt,
as an in-memory bundle.

The network is recognised from the weights alone (`from_official_state_dict`), the labels come
from dataset.json, and spacing, normalization, intensity statistics and patch size from
plans.json. Several folds become an ensemble. nnunet_v1.py translates a v1 folder into the same
form."""
from __future__ import annotations

import datetime
import json
import logging
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from mednextv2.atomic import sha256_file
from mednextv2.bundle import (Bundle, BundleSpec, Channel, InferenceDefaults, Label, NetworkSpec, Normalization,
                              PreprocessingPlan, Provenance, ResampleOrder, Resampling)
from mednextv2.bundle_spec import default_color, strip_absolute_paths
from mednextv2.errors import InputError
from mednextv2.store.checkpoints import load_checkpoint

log = logging.getLogger(__name__)

NNUNET_CHECKPOINT = "checkpoint_final.pth"
# nnU-Net readers that keep the file's voxel order; the value maps their array axes to ours (z, y, x).
_READER_AXES = {"SimpleITKIO": (0, 1, 2), "NibabelIO": (2, 1, 0)}


def default_nnunet_id(folder: Path, configuration: Optional[str] = None) -> str:
    dataset = read_json(folder / "dataset.json")
    plans = read_json(folder / "plans.json")
    name = str(plans.get("dataset_name") or dataset.get("name") or folder.parent.name)
    return id_from_name(name, configuration or configuration_from_folder(folder))


def id_from_name(name: str, config: Optional[str]) -> str:
    config = config or "3d_fullres"
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "nnunet-model"
    suffix = "" if config == "3d_fullres" else "-" + re.sub(r"[^a-z0-9]+", "-", config.lower()).strip("-")
    return (base[: 64 - len(suffix)] + suffix).strip("-")


def convert_nnunet(folder: Path, model_id: str, *, folds: Optional[Sequence[Union[int, str]]] = None,
                   configuration: Optional[str] = None, checkpoint: str = NNUNET_CHECKPOINT,
                   grn_norm: Optional[str] = None, progress=None) -> Bundle:
    """An in-memory bundle from an nnU-Net v2 results folder whose network is a MedNeXt."""
    return convert_results(folder, model_id, read_json(folder / "dataset.json"), read_json(folder / "plans.json"),
                           folds=folds, configuration=configuration, checkpoint=checkpoint, grn_norm=grn_norm,
                           progress=progress)


def convert_results(folder: Path, model_id: str, dataset: Mapping, plans: Mapping, *,
                    folds: Optional[Sequence[Union[int, str]]] = None, configuration: Optional[str] = None,
                    checkpoint: str = NNUNET_CHECKPOINT, grn_norm: Optional[str] = None, progress=None,
                    source: str = "nnU-Net v2", trainer_name: Optional[str] = None) -> Bundle:
    """A bundle from nnU-Net results given as v2's dataset.json and plans.json contents
    (nnunet_v1.py translates a v1 folder's plans.pkl into that form)."""
    config_name = configuration or configuration_from_folder(folder) or _default_configuration(plans, folder)
    conf = _resolve_configuration(plans, config_name, folder)
    labels = _labels(dataset, folder)
    channels = _channels(dataset, folder)
    axes = _axes_to_network(plans, folder)
    fold_dirs = _fold_dirs(folder, folds, checkpoint)

    import torch

    state_dicts, config, digests, mirrors, trainers = [], None, {}, {}, set()
    for i, fold_dir in enumerate(fold_dirs):
        if progress:
            progress("import", i / len(fold_dirs), f"reading {fold_dir.name}/{checkpoint}")
        path = fold_dir / checkpoint
        ckpt = load_checkpoint(path)
        fold_config, state = _mednext_state(ckpt, path)
        if config is not None and fold_config != config:
            raise InputError(f"{path}: network differs from the other folds ({fold_config} vs {config}); "
                             "an ensemble needs one architecture")
        config = fold_config
        state_dicts.append(permute_spatial(state, axes, torch))
        digests[fold_dir.name] = sha256_file(path)
        mirrors[fold_dir.name] = _fold_mirror_axes(ckpt, axes, path)
        trainers.add(ckpt.get("trainer_name") if isinstance(ckpt, dict) else None)
    if progress:
        progress("import", 1.0, f"read {len(fold_dirs)} fold(s)")
    _check_counts(config, labels, channels, folder)
    config = with_grn_norm(config, grn_norm)

    spec = BundleSpec(
        id=model_id,
        title=str(dataset.get("name") or plans.get("dataset_name") or model_id),
        description=(str(dataset.get("description", "")).strip() + " " if dataset.get("description") else "")
        + f"Imported from {source} results {folder.name} ({config_name}, {len(fold_dirs)} fold(s)).",
        license=str(dataset.get("licence") or dataset.get("license")) if dataset.get("licence") or dataset.get("license") else None,
        network=NetworkSpec.from_config(config),
        weights=tuple(f"{d.name}.safetensors" for d in fold_dirs),
        labels=tuple(Label(value, name, default_color(value)) for name, value in labels),
        channels=tuple(Channel(name, "CT" if "CT" in name.upper() else "MR") for name in channels),
        preprocessing=PreprocessingPlan(
            target_spacing=_to_ours([float(s) for s in conf["spacing"]], axes),
            normalization=tuple(Normalization.from_json(n) for n in _normalization(plans, conf, len(channels), folder)),
            crop_to_nonzero=True,  # nnU-Net crops every image to its non-zero box (and predicts background outside)
            use_mask_for_norm=any(bool(x) for x in conf.get("use_mask_for_norm", [])),
            orientation="as-is",  # nnU-Net's non-reorienting readers keep the file's voxel order
            resampling=_resampling(conf),
        ),
        inference=InferenceDefaults(
            patch_size=_patch_size(_to_ours([int(p) for p in conf["patch_size"]], axes)),
            step=0.5,
            **_mirror_defaults(list(mirrors.values())),
            importance_map="nnunet",  # stitch tiles with nnU-Net's own Gaussian, as its predictor does
        ),
        provenance=Provenance(
            base_model=None,
            training_data=str(plans.get("dataset_name") or dataset.get("name") or folder.parent.name),
            date=datetime.date.today().isoformat(),
            imported_from={"trainer_folder": folder.name, "configuration": config_name,
                           "folds": [d.name for d in fold_dirs], "checkpoint": checkpoint,
                           "checkpoint_sha256": digests, "mirror_axes": mirrors,
                           "trainer": ", ".join(sorted(t for t in trainers if t)) or trainer_name},
        ),
    )
    return Bundle.create(strip_absolute_paths(spec), state_dicts)  # dataset.json text may name local paths


def with_grn_norm(config, grn_norm: Optional[str]):
    """The config with GRN's normaliser; checkpoints cannot tell "mean" from "sum", so the user says."""
    if grn_norm is None:
        return config
    from mednextv2.network.config import GRN_NORMS

    if grn_norm not in GRN_NORMS:
        raise InputError(f"--grn-norm must be one of {', '.join(GRN_NORMS)}, got {grn_norm!r}")
    return config.replace(grn_norm=grn_norm)


def _mednext_state(ckpt, path: Path):
    from mednextv2.network import from_official_state_dict

    try:
        model = from_official_state_dict(ckpt, deep_supervision=False)
    except ValueError as e:
        raise InputError(f"{path}: the network is not a MedNeXt ({e}). Only nnU-Net results trained with a "
                         "MedNeXt network can be imported.") from e
    config = model.config.replace(deep_supervision=False)
    # Deep-supervision heads are training-only; the bundle's network has none.
    state = {k: v for k, v in model.state_dict().items() if not re.match(r"out_[1-9]\.", k)}
    return config, state


def permute_spatial(state: Dict, axes: Sequence[int], torch) -> Dict:
    """Bake nnU-Net's axis order into the weights, so the network takes our (z, y, x) arrays.

    nnU-Net feeds the network array axes `axes` of ours (transpose_forward on top of the reader's
    order). Every operation is cubic and applied alike on all three axes (kernels k^3, strides 2,
    padding, GRN over all voxels), so permuting the spatial axes of every 5-D weight is exact."""
    if list(axes) == [0, 1, 2]:
        return state
    inverse = [int(i) for i in sorted(range(3), key=lambda i: axes[i])]
    order = (0, 1) + tuple(2 + i for i in inverse)
    return {k: v.permute(*order).contiguous() if v.dim() == 5 else v for k, v in state.items()}


def _fold_mirror_axes(ckpt, axes: Sequence[int], path: Path) -> List[int]:
    """The axes (ours, z y x) this fold's trainer allowed mirroring on; nnU-Net's default is all three."""
    raw = ckpt.get("inference_allowed_mirroring_axes", (0, 1, 2)) if isinstance(ckpt, Mapping) else (0, 1, 2)
    try:
        network_axes = [int(a) for a in (raw or ())]
    except (TypeError, ValueError) as e:
        raise InputError(f"{path}: inference_allowed_mirroring_axes must be a list of axes 0..2, got {raw!r}") from e
    if any(a not in (0, 1, 2) for a in network_axes):
        raise InputError(f"{path}: inference_allowed_mirroring_axes must be axes 0..2, got {raw!r}")
    return sorted(axes[a] for a in set(network_axes))


def _mirror_defaults(per_fold: List[List[int]]) -> Dict[str, Any]:
    """The bundle's test-time mirroring: each fold on the axes its own trainer allowed, as nnU-Net
    predicts. Folds that agree need only `mirror_axes`; otherwise `fold_mirror_axes` lists each
    fold's and `mirror_axes` is their union (what turning TTA on or off refers to)."""
    if all(a == per_fold[0] for a in per_fold):
        return {"mirror_axes": per_fold[0]}
    return {"mirror_axes": sorted(set().union(*per_fold)), "fold_mirror_axes": per_fold}


def _resampling(conf: Mapping) -> Optional[Resampling]:
    """The plan's spline orders for images and probabilities (nnU-Net's defaults where it has none),
    when it uses nnU-Net's standard resampling function; else None (linear)."""
    for kind in ("data", "probabilities"):
        if conf.get(f"resampling_fn_{kind}", "resample_data_or_seg_to_shape") != "resample_data_or_seg_to_shape":
            log.warning("plans: resampling_fn_%s %r is not nnU-Net's standard one; using linear resampling",
                        kind, conf.get(f"resampling_fn_{kind}"))
            return None

    def order(key: str, default: int, orders: Sequence[int]) -> ResampleOrder:
        kwargs = conf.get(key) or {}
        try:
            force = kwargs.get("force_separate_z")
            result = ResampleOrder(int(kwargs.get("order", default)), int(kwargs.get("order_z", 0)),
                                   None if force is None else bool(force))
        except (TypeError, ValueError, AttributeError) as e:
            raise InputError(f"plans: {key} must hold integer 'order' and 'order_z', got {kwargs!r}") from e
        if result.order not in orders or result.order_z != 0:
            raise InputError(f"plans: {key} asks for spline order {result.order} (order_z {result.order_z}); "
                             f"mednextv2 reproduces order {' or '.join(map(str, orders))} with order_z 0 (nnU-Net's defaults)")
        return result

    return Resampling(order("resampling_fn_data_kwargs", 3, (1, 3)), order("resampling_fn_probabilities_kwargs", 1, (1,)),
                      normalize_first=bool(conf.get("normalize_first", True)),
                      softmax_first=bool(conf.get("softmax_first", False)))


def _to_ours(values: Sequence, axes: Sequence[int]) -> list:
    """A per-axis list in network order -> our (z, y, x) order."""
    out = [None, None, None]
    for i, a in enumerate(axes):
        out[a] = values[i]
    return out


def _patch_size(patch: List[int]) -> List[int]:
    rounded = [max(16, -(-int(p) // 16) * 16) for p in patch]
    if rounded != patch:
        log.warning("patch size %s is not divisible by 16; using %s", patch, rounded)
    return rounded


def _axes_to_network(plans: Mapping, folder: Path) -> List[int]:
    reader = str(plans.get("image_reader_writer", "SimpleITKIO"))
    if reader not in _READER_AXES:
        raise InputError(f"{folder / 'plans.json'}: image_reader_writer {reader!r} is not supported: the network was "
                         f"trained on images read by it, and only {sorted(_READER_AXES)} keep the voxel order that "
                         "mednextv2 reproduces exactly (reorienting readers would mirror the anatomy)")
    transpose = [int(a) for a in plans.get("transpose_forward", [0, 1, 2])]
    if sorted(transpose) != [0, 1, 2]:
        raise InputError(f"{folder / 'plans.json'}: transpose_forward must be a permutation of [0, 1, 2], got {transpose}")
    return [_READER_AXES[reader][t] for t in transpose]


def configuration_from_folder(folder: Path) -> Optional[str]:
    parts = folder.name.split("__")  # <Trainer>__<Plans>__<configuration>
    return parts[2] if len(parts) == 3 and parts[2] else None


def _default_configuration(plans: Mapping, folder: Path) -> str:
    configs = [c for c in plans.get("configurations", {}) if not c.startswith("2d")]
    if "3d_fullres" in configs:
        return "3d_fullres"
    if len(configs) == 1:
        return configs[0]
    raise InputError(f"{folder / 'plans.json'}: choose the configuration the folder was trained with "
                     f"(--configuration), one of {configs}")


def _resolve_configuration(plans: Mapping, name: str, folder: Path) -> dict:
    configs = plans.get("configurations")
    if not isinstance(configs, dict) or name not in configs:
        raise InputError(f"{folder / 'plans.json'}: no configuration {name!r}; it has {sorted(configs or {})}")
    conf, seen = dict(configs[name]), {name}
    while "inherits_from" in conf:  # nnU-Net lets a configuration override a parent's settings
        parent = conf.pop("inherits_from")
        if parent in seen or parent not in configs:
            raise InputError(f"{folder / 'plans.json'}: configuration {name!r} inherits from unknown or circular {parent!r}")
        seen.add(parent)
        conf = {**configs[parent], **conf}
    for key in ("spacing", "patch_size", "normalization_schemes"):
        if key not in conf:
            raise InputError(f"{folder / 'plans.json'}: configuration {name!r} has no {key!r}")
    if len(conf["patch_size"]) != 3 or len(conf["spacing"]) != 3:
        raise InputError(f"{folder / 'plans.json'}: configuration {name!r} is 2D (patch size {conf['patch_size']}); "
                         "MedNeXt bundles are 3D")
    return conf


def _labels(dataset: Mapping, folder: Path) -> List[Tuple[str, int]]:
    where = folder / "dataset.json"
    raw = dataset.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{where}: 'labels' must map label names to values, e.g. {{\"background\": 0, \"liver\": 1}}")
    if all(str(k).isdigit() and isinstance(v, str) for k, v in raw.items()):
        raw = {v: int(k) for k, v in raw.items()}  # the nnU-Net v1 form {"0": "background", ...}
    labels = []
    for name, value in raw.items():
        if isinstance(value, (list, tuple)):
            raise InputError(f"{where}: label {name!r} is a region {value}; region-based nnU-Net models are not supported")
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(f"{where}: label {name!r} has value {value!r}, expected an integer")
        if name == "ignore" or value == 0:
            continue  # background is implicit; the ignore label has no output channel
        labels.append((str(name), int(value)))
    labels.sort(key=lambda item: item[1])
    if [v for _, v in labels] != list(range(1, len(labels) + 1)):
        raise InputError(f"{where}: label values must be 1..N without gaps, got {[v for _, v in labels]}")
    return labels


def _channels(dataset: Mapping, folder: Path) -> List[str]:
    raw = dataset.get("channel_names") or dataset.get("modality")
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{folder / 'dataset.json'}: 'channel_names' must map channel indices to names, e.g. {{\"0\": \"CT\"}}")
    try:
        order = sorted(raw, key=int)
    except ValueError as e:
        raise InputError(f"{folder / 'dataset.json'}: channel_names keys must be 0, 1, ..., got {sorted(raw)}") from e
    if [int(k) for k in order] != list(range(len(order))):
        raise InputError(f"{folder / 'dataset.json'}: channel_names keys must be 0..{len(order) - 1}, got {order}")
    return [str(raw[k]) for k in order]


def _normalization(plans: Mapping, conf: Mapping, n_channels: int, folder: Path) -> List[dict]:
    schemes = list(conf["normalization_schemes"])
    if len(schemes) != n_channels:
        raise InputError(f"{folder / 'plans.json'}: {len(schemes)} normalization scheme(s) for {n_channels} channel(s)")
    stats = plans.get("foreground_intensity_properties_per_channel") or plans.get("foreground_intensity_properties_by_modality") or {}
    out = []
    for i, scheme in enumerate(schemes):
        if scheme == "CTNormalization":
            s = stats.get(str(i))
            needed = ("mean", "std", "percentile_00_5", "percentile_99_5")
            if not isinstance(s, dict) or any(k not in s for k in needed):
                raise InputError(f"{folder / 'plans.json'}: CTNormalization of channel {i} needs "
                                 f"foreground_intensity_properties_per_channel[\"{i}\"] with {', '.join(needed)}")
            out.append({"scheme": "ct", "clip": [float(s["percentile_00_5"]), float(s["percentile_99_5"])],
                        "mean": float(s["mean"]), "std": max(float(s["std"]), 1e-8)})
        elif scheme == "ZScoreNormalization":
            out.append({"scheme": "zscore"})
        elif scheme == "NoNormalization":
            out.append({"scheme": "none"})
        else:
            raise InputError(f"{folder / 'plans.json'}: normalization scheme {scheme!r} of channel {i} is not supported "
                             "(CTNormalization, ZScoreNormalization and NoNormalization are)")
    return out


def _fold_dirs(folder: Path, folds, checkpoint: str) -> List[Path]:
    """The fold folders to import. A fold is a name (0, "0", "all" or "fold_0") matched against the
    folder's own fold_* children, never a path: "--fold 0/../../x" must not reach outside."""
    if not re.match(r"^[A-Za-z0-9_.-]+\.(pth|model)$", checkpoint):
        raise InputError(f"checkpoint must be a file name like checkpoint_final.pth, got {checkpoint!r}")
    available = sorted((p for p in folder.glob("fold_*") if p.is_dir()), key=lambda p: p.name)
    if folds:
        by_name = {p.name: p for p in available}
        names = [str(f) if str(f).startswith("fold_") else f"fold_{f}" for f in folds]
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise InputError(f"{folder}: no fold named {', '.join(repr(n) for n in unknown)}; folds are names of "
                             f"its fold_* folders: {[p.name for p in available] or 'none'}")
        missing = [n for n in names if not (by_name[n] / checkpoint).is_file()]
        if missing:
            raise InputError(f"{folder}: no {checkpoint} in {', '.join(missing)}; folds present: "
                             f"{[p.name for p in available] or 'none'}")
        return [by_name[n] for n in names]
    chosen = [p for p in available if (p / checkpoint).is_file()]
    if not chosen:
        others = sorted({c.name for p in available for c in [*p.glob('*.pth'), *p.glob('*.model')]})
        hint = f"; checkpoints present: {others} (choose one with --checkpoint)" if others else ""
        raise InputError(f"{folder}: no fold_*/{checkpoint} found{hint}")
    return chosen


def _check_counts(config, labels, channels, folder: Path) -> None:
    if config.n_classes != len(labels) + 1:
        raise InputError(f"{folder}: the network has {config.n_classes} outputs but dataset.json lists "
                         f"{len(labels)} label(s) + background")
    if config.in_channels != len(channels):
        raise InputError(f"{folder}: the network takes {config.in_channels} channel(s) but dataset.json lists {len(channels)}")


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise InputError(f"{path} is missing") from e
    except (OSError, ValueError) as e:
        raise InputError(f"{path} is not valid JSON: {e}") from e
    except RecursionError as e:
        raise InputError(f"{path} is not valid JSON: nested too deeply") from e
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data

