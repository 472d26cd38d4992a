"""Get models into the cache from local files: bundle folders or zips, nnU-Net v2 and v1 results,
and MONAI MedNeXt weights.

What a folder holds is recognised here (`find_model_root`); each kind has its converter
(nnunet_v2.py, nnunet_v1.py, monai.py). Every imported bundle is saved, loaded back and its
networks built before it enters the cache, so a model that cannot run is never installed.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, Optional, Tuple, Union

from mednextv2 import MODELS_DOC_URL
from mednextv2.bundle import MODEL_JSON, Bundle, load_bundle
from mednextv2.bundle_spec import strip_absolute_paths
from mednextv2.errors import InputError
from mednextv2.option_fields import cli, option_fields, option_flags
from mednextv2.output_guard import resolved
from mednextv2.safezip import safe_extract_zip
from mednextv2.store.cache import ModelCache, check_model_id
from mednextv2.store.nnunet_v1 import convert_nnunet_v1, default_id_name, is_v1_results
from mednextv2.store.nnunet_v2 import (NNUNET_CHECKPOINT, configuration_from_folder, convert_nnunet, default_nnunet_id,
                                       id_from_name)


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
        found = [(k, p) for k, p in found if k == "nnunet" and configuration_from_folder(p) == configuration] or found
    if not found:
        raise InputError(f"{folder} holds neither a model bundle (model.json) nor an nnU-Net results folder (v2: "
                         "plans.json + dataset.json + fold_*/checkpoint_final.pth; v1: plans.pkl + "
                         "fold_*/model_final_checkpoint.model)")
    if len(found) > 1:
        listed = "\n  ".join(str(p) for _, p in found)
        raise InputError(f"{folder} holds several models; import one of them (or pick an nnU-Net configuration "
                         f"with --configuration):\n  {listed}")
    return found[0]


@dataclass(frozen=True)
class ImportOptions:
    """How to read a model that is not a bundle, checked when made; the one source of `models import`'s
    options. nnU-Net results: folds, configuration, checkpoint, GRN's normaliser (checkpoints cannot
    tell "mean" from "sum") and, for v1 folders, which have no label names, the raw dataset.json.
    A MONAI MedNeXt: `source_format="monai"` with `config`, its description (monai.py)."""
    folds: Optional[Tuple[Union[int, str], ...]] = field(default=None, metadata=cli(
        "nnU-Net: use only this fold (repeatable; default: every fold found, as an ensemble)", "--fold",
        type=str, action="append", metavar="FOLD"))
    configuration: Optional[str] = field(default=None, metadata=cli(
        "nnU-Net: plans configuration (default: from the folder name, else 3d_fullres)"))
    checkpoint: Optional[str] = field(default=None, metadata=cli(
        "nnU-Net: checkpoint file name in each fold (default: checkpoint_final.pth for v2, "
        "model_final_checkpoint.model for v1)"))
    grn_norm: Optional[str] = field(default=None, metadata=cli(
        "nnU-Net: GRN normaliser the network was trained with: mean over channels (official MedNeXt code, the "
        f"default) or sum (the seed paper); see {MODELS_DOC_URL}", choices=["mean", "sum"]))
    dataset_json: Optional[Path] = field(default=None, metadata=cli(
        "nnU-Net v1: the raw dataset's dataset.json, for label names (v1 results folders have none)", metavar="PATH"))
    source_format: Optional[str] = field(default=None, metadata=cli(
        "monai: PATH is a monai.networks.nets.MedNeXt state dict (.pt read weights-only, or .safetensors) or a "
        "MONAI bundle folder or zip; needs --config", "--from", choices=["monai"]))
    config: Optional[Path] = field(default=None, metadata=cli(
        "--from monai: labels, channels, orientation, pixdim, normalization, roi_size (and the MONAI constructor "
        f"arguments, checked against the weights); see {MODELS_DOC_URL}", metavar="JSON"))

    def __post_init__(self) -> None:
        if self.folds is not None:  # fold numbers as nnU-Net names them: 0, fold_0 and "all" all name folds
            object.__setattr__(self, "folds", tuple(int(f) if str(f).isdigit() else f for f in self.folds))
        for name in ("dataset_json", "config"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if self.source_format not in (None, "monai"):
            raise InputError(f"--from must be 'monai' (or left out for bundles and nnU-Net results), "
                             f"got {self.source_format!r}")
        if self.source_format is None and self.config is not None:
            raise InputError("--config describes a MONAI MedNeXt; give it with --from monai")
        if self.source_format == "monai":
            fields = option_fields(ImportOptions)
            given = [option_flags(fields[name])[0] for name in _NNUNET_OPTIONS if getattr(self, name)]
            if given:
                raise InputError(f"{', '.join(given)}: nnU-Net options; they do not apply to --from monai")


_NNUNET_OPTIONS = ("folds", "configuration", "checkpoint", "grn_norm", "dataset_json")


def import_model(path: Union[str, Path], cache: Optional[ModelCache] = None, *, model_id: Optional[str] = None,
                 options: ImportOptions = ImportOptions(), replace: bool = False, progress=None) -> Path:
    """Import a bundle (folder or zip), an nnU-Net v2 or v1 results folder or zip, or a MONAI MedNeXt
    (`options.source_format="monai"`) into the cache. Returns the installed bundle folder, usable as `-m <id>`."""
    source = Path(path).expanduser()
    resolved(source, "cannot import:")
    if not source.exists():
        raise InputError(f"cannot import {source}: no such file or folder")
    cache = cache or ModelCache.open()
    if model_id is not None:
        check_model_id(model_id)
    with cache.staging("import") as stage:
        staged, final_id, details = _stage_model(source, stage, model_id, options, progress)
        info = {"source": "import", "origin": str(source.resolve()), **details}
        with cache.lock(final_id):
            if cache.is_installed(final_id) and not replace:
                raise InputError(f"a model with id {final_id!r} is already installed in {cache.model_dir(final_id)}; "
                                 "choose another id with --id, or replace it with --replace")
            return cache.install(staged, final_id, info)


def install_archive(archive: Path, cache: ModelCache, model_id: str, *, kind: str = "bundle",
                    options: ImportOptions = ImportOptions(), info: Optional[Mapping] = None, progress=None) -> Path:
    """Install a verified downloaded archive under `model_id`. The caller holds the model's lock."""
    with cache.staging("install") as stage:
        staged, _, details = _stage_model(archive, stage, model_id, options, progress, expect=kind)
        return cache.install(staged, model_id, {**dict(info or {}), **details})


def _stage_model(source: Path, stage: Path, model_id: Optional[str], options: ImportOptions, progress,
                 expect: Optional[str] = None) -> Tuple[Path, str, dict]:
    """A validated bundle folder inside `stage`, its id, and facts for the install record."""
    if options.source_format == "monai":
        from mednextv2.store.monai import convert_monai

        bundle = convert_monai(source, options.config, model_id, stage / "unpacked")
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
    kind, found = find_model_root(root, options.configuration)
    if expect is not None and kind != expect:
        raise InputError(f"{source}: expected a {expect} archive, found a {kind} ({found.name})")
    if kind == "bundle":
        if options.grn_norm:
            raise InputError(f"{found}: --grn-norm applies to nnU-Net results; a bundle sets network.grn_norm in its {MODEL_JSON}")
        bundle = load_bundle(found)
        final_id = model_id or bundle.id
        check_model_id(final_id)
        bundle = Bundle(spec=strip_absolute_paths(bundle.spec.replace(id=final_id)), source=bundle.source)
        details = {"format": "bundle"}
    elif kind == "nnunet-v1":
        final_id = model_id or id_from_name(default_id_name(found), options.configuration)
        check_model_id(final_id)
        bundle = convert_nnunet_v1(found, final_id, folds=options.folds, configuration=options.configuration,
                                   checkpoint=options.checkpoint, grn_norm=options.grn_norm,
                                   dataset_json=options.dataset_json, progress=progress)
        details = {"format": "nnunet-v1", **bundle.spec.provenance.imported_from}
    else:
        final_id = model_id or default_nnunet_id(found, options.configuration)
        check_model_id(final_id)
        bundle = convert_nnunet(found, final_id, folds=options.folds, configuration=options.configuration,
                                checkpoint=options.checkpoint or NNUNET_CHECKPOINT,
                                grn_norm=options.grn_norm, progress=progress)
        details = {"format": "nnunet", **bundle.spec.provenance.imported_from}
    return _save_checked(bundle, stage), final_id, details


def _save_checked(bundle: Bundle, stage: Path) -> Path:
    staged = stage / "bundle"
    bundle.save(staged)
    load_bundle(staged).build_models("cpu")  # proves the weights fit the network before it enters the cache
    return staged
