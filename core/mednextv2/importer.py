"""Get models into the cache from local files: bundle folders or zips, and nnU-Net v2 results.

An nnU-Net v2 results folder (`dataset.json`, `plans.json`, `fold_*/checkpoint_final.pth`, as
`nnUNetv2_train` writes it or `nnUNetv2_export_model_to_zip` packs it) whose network is a MedNeXt
becomes a bundle: the network is recognised from the weights alone (`from_official_state_dict`),
the labels come from dataset.json, and spacing, normalization, intensity statistics and patch
size from plans.json. Several folds become an ensemble. Checkpoints are read with
`torch.load(weights_only=True)`; only numpy scalars (nnU-Net logs its Dice as numpy floats)
are allowed on top of what that permits, so a checkpoint that needs code to load is refused.
"""
from __future__ import annotations

import datetime
import json
import logging
import re
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from mednextv2.atomic import sha256_file
from mednextv2.bundle import (MODEL_JSON, Bundle, BundleSpec, Channel, InferenceDefaults, Label, NetworkSpec,
                              Normalization, PreprocessingPlan, Provenance, ResampleOrder, Resampling, load_bundle)
from mednextv2.bundle_spec import default_color, strip_absolute_paths
from mednextv2.cache import ModelCache, check_model_id, format_size
from mednextv2.errors import InputError
from mednextv2.output_guard import resolved
from mednextv2.nnunet_v1 import convert_nnunet_v1, default_id_name, is_v1_results
from mednextv2.safezip import safe_extract_zip

log = logging.getLogger(__name__)

NNUNET_CHECKPOINT = "checkpoint_final.pth"
# A MedNeXt-v2 width-2 checkpoint with deep supervision and its optimizer state holds ~2,000 tensors;
# a flood of 200k empty ones took torch.load minutes and GBs before anything could look at it.
MAX_CHECKPOINT_RECORDS = 20_000
MAX_CHECKPOINT_PICKLE_BYTES = 64 << 20
# nnU-Net readers that keep the file's voxel order; the value maps their array axes to ours (z, y, x).
_READER_AXES = {"SimpleITKIO": (0, 1, 2), "NibabelIO": (2, 1, 0)}


# ---------------------------------------------------------------- what a folder holds
def find_model_root(folder: Path, configuration: Optional[str] = None, max_depth: int = 3) -> Tuple[str, Path]:
    """("bundle", folder with model.json), ("nnunet", folder with plans.json + dataset.json) or
    ("nnunet-v1", folder with plans.pkl + fold_*).

    An nnU-Net export zip may hold several `<Trainer>__<Plans>__<configuration>` folders;
    `configuration` picks one."""
    found: List[Tuple[str, Path]] = []
    level = [folder]
    for _ in range(max_depth + 1):
        for path in level:
            if (path / MODEL_JSON).is_file():
                found.append(("bundle", path))
            elif (path / "plans.json").is_file() and (path / "dataset.json").is_file():
                found.append(("nnunet", path))
            elif is_v1_results(path):
                found.append(("nnunet-v1", path))
        if found:
            break
        level = [p for path in level for p in sorted(path.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if len(found) > 1 and configuration:
        found = [(k, p) for k, p in found if k == "nnunet" and _configuration_from_folder(p) == configuration] or found
    if not found:
        raise InputError(f"{folder} holds neither a model bundle (model.json) nor an nnU-Net results folder (v2: "
                         "plans.json + dataset.json + fold_*/checkpoint_final.pth; v1: plans.pkl + "
                         "fold_*/model_final_checkpoint.model)")
    if len(found) > 1:
        listed = "\n  ".join(str(p) for _, p in found)
        raise InputError(f"{folder} holds several models; import one of them (or pick an nnU-Net configuration "
                         f"with --configuration):\n  {listed}")
    return found[0]


# ---------------------------------------------------------------- public entry points
def import_model(path: Union[str, Path], cache: Optional[ModelCache] = None, *, model_id: Optional[str] = None,
                 folds: Optional[Sequence[Union[int, str]]] = None, configuration: Optional[str] = None,
                 checkpoint: Optional[str] = None, grn_norm: Optional[str] = None,
                 dataset_json: Optional[Union[str, Path]] = None, replace: bool = False, progress=None,
                 source_format: Optional[str] = None, config: Optional[Union[str, Path]] = None) -> Path:
    """Import a bundle (folder or zip) or an nnU-Net v2 or v1 results folder or zip into the cache.

    `dataset_json`: label names for an nnU-Net v1 folder (which has none), from its raw dataset.json.
    `source_format` "monai" with `config`: a MONAI MedNeXt state dict or MONAI bundle (monai_import.py).

    `grn_norm` ("mean" or "sum"): GRN's normaliser for an nnU-Net import (default "mean", the
    official MedNeXt code); see docs/models.md. Returns the installed bundle folder, usable as `-m <id>`."""
    source = Path(path).expanduser()
    resolved(source, "cannot import:")
    if not source.exists():
        raise InputError(f"cannot import {source}: no such file or folder")
    cache = cache or ModelCache.open()
    if model_id is not None:
        check_model_id(model_id)
    options = dict(folds=folds, configuration=configuration, checkpoint=checkpoint, grn_norm=grn_norm,
                   dataset_json=dataset_json)
    _check_source_format(source_format, config, options)
    if source_format == "monai":
        options = {"source_format": "monai", "config": config}
    with cache.staging("import") as stage:
        staged, final_id, details = _stage_model(source, stage, model_id, options, progress)
        info = {"source": "import", "origin": str(source.resolve()), **details}
        with cache.lock(final_id):
            if cache.is_installed(final_id) and not replace:
                raise InputError(f"a model with id {final_id!r} is already installed in {cache.model_dir(final_id)}; "
                                 "choose another id with --id, or replace it with --replace")
            return cache.install(staged, final_id, info)


def install_archive(archive: Path, cache: ModelCache, model_id: str, *, kind: str = "bundle",
                    options: Optional[Mapping] = None, info: Optional[Mapping] = None, progress=None) -> Path:
    """Install a verified downloaded archive under `model_id`. The caller holds the model's lock."""
    options = dict(options or {})
    with cache.staging("install") as stage:
        staged, _, details = _stage_model(archive, stage, model_id, options, progress, expect=kind)
        return cache.install(staged, model_id, {**dict(info or {}), **details})


def _stage_model(source: Path, stage: Path, model_id: Optional[str], options: Mapping, progress,
                 expect: Optional[str] = None) -> Tuple[Path, str, dict]:
    """A validated bundle folder inside `stage`, its id, and facts for the install record."""
    if options.get("source_format") == "monai":
        from mednextv2.monai_import import convert_monai

        bundle = convert_monai(source, options.get("config"), model_id, stage / "unpacked")
        return _save_checked(bundle, stage), bundle.id, {"format": "monai", **bundle.spec.provenance.imported_from}
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise InputError(f"{source} is neither a folder nor a zip file")
        if progress:
            progress("unpack", 0.0, f"unpacking {source.name}")
        safe_extract_zip(source, stage / "unpacked")
        if progress:
            progress("unpack", 1.0, f"unpacked {source.name}")
        root = stage / "unpacked"
    else:
        root = source
    kind, found = find_model_root(root, options.get("configuration"))
    if expect is not None and kind != expect:
        raise InputError(f"{source}: expected a {expect} archive, found a {kind} ({found.name})")
    if kind == "bundle":
        if options.get("grn_norm"):
            raise InputError(f"{found}: --grn-norm applies to nnU-Net results; a bundle sets network.grn_norm in its {MODEL_JSON}")
        bundle = load_bundle(found)
        final_id = model_id or bundle.id
        check_model_id(final_id)
        bundle = Bundle(spec=strip_absolute_paths(bundle.spec.replace(id=final_id)), source=bundle.source)
        details = {"format": "bundle"}
    elif kind == "nnunet-v1":
        final_id = model_id or _id_from_name(default_id_name(found), options.get("configuration"))
        check_model_id(final_id)
        bundle = convert_nnunet_v1(found, final_id, folds=options.get("folds"), configuration=options.get("configuration"),
                                   checkpoint=options.get("checkpoint"), grn_norm=options.get("grn_norm"),
                                   dataset_json=options.get("dataset_json"), progress=progress)
        details = {"format": "nnunet-v1", **bundle.spec.provenance.imported_from}
    else:
        final_id = model_id or default_nnunet_id(found, options.get("configuration"))
        check_model_id(final_id)
        bundle = convert_nnunet(found, final_id, folds=options.get("folds"), configuration=options.get("configuration"),
                                checkpoint=options.get("checkpoint") or NNUNET_CHECKPOINT,
                                grn_norm=options.get("grn_norm"), progress=progress)
        details = {"format": "nnunet", **bundle.spec.provenance.imported_from}
    return _save_checked(bundle, stage), final_id, details


def _save_checked(bundle: Bundle, stage: Path) -> Path:
    staged = stage / "bundle"
    bundle.save(staged)
    load_bundle(staged).build_models("cpu")  # proves the weights fit the network before it enters the cache
    return staged


def _check_source_format(source_format: Optional[str], config, options: Mapping) -> None:
    """--from and --config go together; the nnU-Net options mean nothing for a MONAI import."""
    if source_format not in (None, "monai"):
        raise InputError(f"--from must be 'monai' (or left out for bundles and nnU-Net results), got {source_format!r}")
    if source_format is None and config is not None:
        raise InputError("--config describes a MONAI MedNeXt; give it with --from monai")
    if source_format == "monai":
        flags = {"folds": "--fold", "configuration": "--configuration", "checkpoint": "--checkpoint",
                 "grn_norm": "--grn-norm", "dataset_json": "--dataset-json"}
        given = [flags[k] for k, v in options.items() if v]
        if given:
            raise InputError(f"{', '.join(given)}: nnU-Net options; they do not apply to --from monai")


# ---------------------------------------------------------------- nnU-Net v2 conversion
def default_nnunet_id(folder: Path, configuration: Optional[str] = None) -> str:
    dataset = _read_json(folder / "dataset.json")
    plans = _read_json(folder / "plans.json")
    name = str(plans.get("dataset_name") or dataset.get("name") or folder.parent.name)
    return _id_from_name(name, configuration or _configuration_from_folder(folder))


def _id_from_name(name: str, config: Optional[str]) -> str:
    config = config or "3d_fullres"
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "nnunet-model"
    suffix = "" if config == "3d_fullres" else "-" + re.sub(r"[^a-z0-9]+", "-", config.lower()).strip("-")
    return (base[: 64 - len(suffix)] + suffix).strip("-")


def convert_nnunet(folder: Path, model_id: str, *, folds: Optional[Sequence[Union[int, str]]] = None,
                   configuration: Optional[str] = None, checkpoint: str = NNUNET_CHECKPOINT,
                   grn_norm: Optional[str] = None, progress=None) -> Bundle:
    """An in-memory bundle from an nnU-Net v2 results folder whose network is a MedNeXt."""
    return convert_results(folder, model_id, _read_json(folder / "dataset.json"), _read_json(folder / "plans.json"),
                           folds=folds, configuration=configuration, checkpoint=checkpoint, grn_norm=grn_norm,
                           progress=progress)


def convert_results(folder: Path, model_id: str, dataset: Mapping, plans: Mapping, *,
                    folds: Optional[Sequence[Union[int, str]]] = None, configuration: Optional[str] = None,
                    checkpoint: str = NNUNET_CHECKPOINT, grn_norm: Optional[str] = None, progress=None,
                    source: str = "nnU-Net v2", trainer_name: Optional[str] = None) -> Bundle:
    """A bundle from nnU-Net results given as v2's dataset.json and plans.json contents
    (nnunet_v1.py translates a v1 folder's plans.pkl into that form)."""
    config_name = configuration or _configuration_from_folder(folder) or _default_configuration(plans, folder)
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
        state_dicts.append(_permute_spatial(state, axes, torch))
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


NNUNET_RESAVE = ("Re-save its 'network_weights' as a plain state dict or safetensors with a trusted nnU-Net "
                 "installation.")


def load_checkpoint(path: Path, advice: str = NNUNET_RESAVE):
    """torch.load with weights_only=True; numpy arrays, scalars and dtypes are the only extra types allowed.
    `advice` ends the message when the file asks for more."""
    import pickle

    import torch

    from mednextv2.safe_pickle import numpy_safe_globals

    allowed = numpy_safe_globals()
    _check_checkpoint_size(path)
    safe = getattr(torch.serialization, "safe_globals", None)
    try:
        if safe is not None:
            with safe(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # what the weights-only unpickler raises for anything beyond data
        lines = str(e).strip().splitlines()
        reason = next((line.strip().rstrip(".") for line in lines if "GLOBAL" in line or "Unsupported" in line),
                      lines[0] if lines else repr(e))
        raise InputError(f"{path} cannot be read with torch.load(weights_only=True): {reason}. Refusing to unpickle it, "
                         f"because that could run code hidden in the file. {advice}") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise InputError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else repr(e)}") from e


def _check_checkpoint_size(path: Path) -> None:
    """Refuse a checkpoint with more tensors or a larger pickle than any MedNeXt's, before unpickling it.

    torch.save writes a zip with one record per tensor storage plus `data.pkl`; counting the
    records reads only the zip's directory."""
    try:
        if not zipfile.is_zipfile(path):
            return  # the legacy (pre-1.6) format: torch.load's weights-only reader is the only check
        with zipfile.ZipFile(path) as zf:
            records = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise InputError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {e}") from e
    if len(records) > MAX_CHECKPOINT_RECORDS:
        raise InputError(f"{path} holds {len(records)} records, more than the {MAX_CHECKPOINT_RECORDS} any MedNeXt "
                         "checkpoint needs: refusing to load it")
    pickled = sum(r.file_size for r in records if r.filename.endswith(".pkl"))
    if pickled > MAX_CHECKPOINT_PICKLE_BYTES:
        raise InputError(f"{path}: its pickled structure is {format_size(pickled)}, more than the "
                         f"{format_size(MAX_CHECKPOINT_PICKLE_BYTES)} any MedNeXt checkpoint needs: refusing to load it")


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


def _permute_spatial(state: Dict, axes: Sequence[int], torch) -> Dict:
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


def _configuration_from_folder(folder: Path) -> Optional[str]:
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


def _read_json(path: Path) -> dict:
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

