"""The model bundle: `model.json` plus one weights file per fold, as a folder or a `.zip` of one.

The bundle is the one contract between training, segmentation, the catalog and Slicer. Its
`model.json` is a `BundleSpec` (bundle_spec.py: the typed fields, their validation against
`schemas/model.schema.json`, documented in docs/bundle.md); this module adds the weights and
the files. Every error names the file and the field.
Weights are never unpickled: safetensors, or `torch.load(weights_only=True)` for `.pt/.pth`.
A zip is read through `safezip.checked_zip`, the same checks as `models import`.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from mednextv2 import atomic
from mednextv2.bundle_spec import (MODEL_JSON, BundleSpec, Channel, InferenceDefaults, Label, NetworkSpec,
                                   Normalization, PreprocessingPlan, Provenance, Resampling, ResampleOrder,
                                   validate_model_json)
from mednextv2.errors import InputError
from mednextv2.safezip import checked_zip
from mednextv2.validation import load_schema, loads_strict, schema_errors
from mednextv2.weights_check import check_network_size, check_weights_file, expected_shapes, max_weights_bytes

log = logging.getLogger(__name__)

__all__ = ["Bundle", "BundleSpec", "Channel", "InferenceDefaults", "Label", "MODEL_JSON", "NetworkSpec",
           "Normalization", "PreprocessingPlan", "Provenance", "Resampling", "ResampleOrder", "load_bundle",
           "load_schema", "schema_errors", "validate_model_json"]

BUNDLE_REPORTS = ("metrics.csv", "training_curve.png")  # `train` copies these beside model.json
PathLike = Union[str, "os.PathLike[str]"]
MAX_MODEL_JSON_BYTES = 16 * 1024 ** 2  # a spec with thousands of labels is < 1 MB
_DS_HEAD = re.compile(r"^out_[1-9]\.")


# ---------------------------------------------------------------- weights sources
def _read_state_dict(data: bytes, name: str, where: str) -> Dict[str, Any]:
    import torch

    if name.endswith(".safetensors"):
        from safetensors.torch import load as load_safetensors
        try:
            return load_safetensors(data)
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise InputError(f"{where}: weights file {name} is not a valid safetensors file ({e})") from e
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for anything beyond plain tensors and containers
        raise InputError(f"{where}: weights file {name} cannot be loaded safely (weights_only=True): {e}. "
                         "Convert it to safetensors.") from e
    for key in ("state_dict", "network_weights", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise InputError(f"{where}: weights file {name} does not hold a state dict")
    return obj


def _zip_prefix(names: Sequence[str], where: str) -> str:
    """model.json may sit at the zip root or inside a single top folder."""
    found = [n for n in names if n.rsplit("/", 1)[-1] == MODEL_JSON and n.count("/") <= 1]
    if not found:
        raise InputError(f"{where}: no {MODEL_JSON} at the root of the zip or in its top folder")
    return min(found, key=len)[: -len(MODEL_JSON)]


# ---------------------------------------------------------------- the bundle
@dataclass(frozen=True, eq=False)
class Bundle:
    """A validated model bundle. Weights come from `source` (folder or zip) or from memory."""

    spec: BundleSpec
    source: Optional[Path] = None
    _state_dicts: Optional[Tuple[Mapping[str, Any], ...]] = field(default=None, repr=False)

    # ---- construction
    @classmethod
    def create(cls, spec: Union[BundleSpec, Mapping[str, Any]], state_dicts: Sequence[Mapping[str, Any]]) -> "Bundle":
        """A new in-memory bundle (training, import). Empty `spec.weights` become fold_{i}.safetensors
        (weights.safetensors for one fold). A mapping is read with `BundleSpec.from_json`."""
        if not isinstance(spec, BundleSpec):
            doc = dict(spec, format_version=spec.get("format_version", 1))
            doc.setdefault("weights", list(default_weight_names(len(state_dicts))))
            spec = BundleSpec.from_json(doc, "new bundle")
        if not spec.weights:
            spec = spec.replace(weights=default_weight_names(len(state_dicts)))
        spec.validated("new bundle")
        if len(spec.weights) != len(state_dicts):
            raise InputError(f"new bundle: weights lists {len(spec.weights)} file(s) but {len(state_dicts)} state dict(s) were given")
        return cls(spec=spec, source=None, _state_dicts=tuple(state_dicts))

    # ---- views on the spec
    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def title(self) -> str:
        return self.spec.title

    @property
    def network(self) -> NetworkSpec:
        return self.spec.network

    @property
    def n_classes(self) -> int:
        return self.spec.network.n_classes

    @property
    def in_channels(self) -> int:
        return self.spec.network.in_channels

    @property
    def weights(self) -> Tuple[str, ...]:
        return self.spec.weights

    @property
    def labels(self) -> Tuple[Label, ...]:
        return self.spec.labels

    @property
    def channels(self) -> Tuple[Tuple[str, str], ...]:
        """(name, modality) per input channel, in network order."""
        return tuple((c.name, c.modality) for c in self.spec.channels)

    @property
    def preprocessing(self) -> PreprocessingPlan:
        return self.spec.preprocessing

    @property
    def inference(self) -> InferenceDefaults:
        return self.spec.inference

    # ---- weights
    def _raw_weights(self) -> List[Tuple[str, bytes]]:
        if self.source is None:
            raise InputError("bundle has no source folder and no in-memory weights")
        out = []
        shapes = self._expected_shapes()  # the sizes to expect, before a byte of weights is read
        if self.source.is_dir():
            for name in self.weights:
                path = self.source / name
                if not path.is_file():
                    raise InputError(f"{self.source / MODEL_JSON}: weights file {name} is missing from the bundle folder")
                check_weights_file(path, shapes, self._where())
                out.append((name, path.read_bytes()))
            return out
        with checked_zip(self.source) as zf:
            prefix = _zip_prefix(list(zf.entries), str(self.source))
            for name in self.weights:
                try:  # at most what the network's weights can take, whatever the zip's headers say
                    out.append((name, zf.read(prefix + name, max_weights_bytes(shapes))))
                except KeyError as e:
                    raise InputError(f"{self.source}: weights file {name} is missing from the zip") from e
        return out

    def load_state_dicts(self) -> List[Mapping[str, Any]]:
        """One state dict per fold, on the CPU."""
        if self._state_dicts is not None:
            return list(self._state_dicts)
        return [_read_state_dict(data, name, self._where()) for name, data in self._raw_weights()]

    def build_models(self, device: Any = "cpu") -> List[Any]:
        """One MedNeXt per fold, weights loaded strictly, eval mode, deep supervision off, on `device`."""
        from mednextv2.network import MedNeXt

        config = self._config()
        if self._state_dicts is not None:  # in memory; weights from files are checked in _raw_weights
            check_network_size(expected_shapes(config), len(self.weights), self._where())
        models = []
        for name, state in zip(self.weights, self.load_state_dicts()):
            model = MedNeXt(config)
            # Deep-supervision heads are training-only: accept them whether or not the file has them.
            model.set_deep_supervision(any(_DS_HEAD.match(k) for k in state))
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise InputError(f"{self._where()}: weights file {name} does not fit the network config: "
                                 f"{str(e).splitlines()[0]}") from e
            model.set_deep_supervision(False)
            models.append(model.eval().to(device))
        return models

    def _config(self) -> Any:
        try:
            return self.network.config()
        except (TypeError, ValueError, KeyError) as e:
            raise InputError(f"{self._where()}: network: {e}") from e

    def _expected_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """The network's tensor shapes (built on the meta device: no memory), its size checked first."""
        shapes = expected_shapes(self._config())
        check_network_size(shapes, len(self.weights), self._where())
        return shapes

    def _where(self) -> str:
        if self.source is None:
            return "bundle"
        return str(self.source / MODEL_JSON if self.source.is_dir() else self.source)

    # ---- saving
    def save(self, path: PathLike) -> Path:
        """Write the bundle to a folder, or to a zip when `path` ends in .zip; atomically (temp + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        files = self._files_to_write()
        if path.suffix.lower() == ".zip":
            with atomic.atomic_path(path) as tmp, open(tmp, "xb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
                for name, data in files:
                    zf.writestr(name, data)
        else:
            if path.exists() and not path.is_dir():
                raise InputError(f"cannot save bundle: {path} exists and is not a folder")
            # The old folder is deleted after the swap: only ever one the engine wrote (docs/promise.md).
            foreign = foreign_entries(path) if path.exists() else []
            if foreign:
                raise InputError(f"cannot save bundle: {path} holds files that are not a model bundle's "
                                 f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
                                 "choose a new or empty folder")
            with atomic.atomic_folder(path) as tmp:
                for name, data in files:
                    (tmp / name).write_bytes(data)
        log.debug("saved model bundle %s to %s", self.id, path)
        return path

    def _files_to_write(self) -> List[Tuple[str, bytes]]:
        files = [(MODEL_JSON, (json.dumps(self.spec.to_json(), indent=2, allow_nan=False) + "\n").encode("utf-8"))]
        if self._state_dicts is None:
            return files + self._raw_weights()
        import torch
        from safetensors.torch import save as save_safetensors

        for name, state in zip(self.weights, self._state_dicts):
            # safetensors refuses shared or strided storage; a contiguous CPU copy is always accepted
            tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
            if name.endswith(".safetensors"):
                data = save_safetensors(tensors)
            else:
                buf = io.BytesIO()
                torch.save(tensors, buf)
                data = buf.getvalue()
            files.append((name, data))
        return files


def default_weight_names(n_folds: int) -> Tuple[str, ...]:
    return ("weights.safetensors",) if n_folds == 1 else tuple(f"fold_{i}.safetensors" for i in range(n_folds))


def foreign_entries(folder: Path) -> List[str]:
    """Entries of an existing folder that are not a bundle's own files (model.json, the weights
    it lists, the training reports): all of them when it has no readable model.json."""
    try:
        manifest = folder / MODEL_JSON
        weights = loads_strict(manifest.read_bytes(), str(manifest))["weights"]
        own = {MODEL_JSON, *BUNDLE_REPORTS, *(w for w in weights if isinstance(w, str))}
    except (OSError, ValueError, KeyError, TypeError):
        own = set()
    return [n for n in sorted(os.listdir(folder)) if n not in own or not (folder / n).is_file()]


# ---------------------------------------------------------------- loading
def load_bundle(path: PathLike) -> Bundle:
    """Load and validate a bundle folder or zip. Weights are read lazily, but must be present."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"model bundle {path} does not exist")
    if path.is_dir():
        where = path / MODEL_JSON
        if not where.is_file():
            raise InputError(f"{path}: not a model bundle (no {MODEL_JSON} inside)")
        if where.stat().st_size > MAX_MODEL_JSON_BYTES:
            raise InputError(f"{where} is larger than {MAX_MODEL_JSON_BYTES >> 20} MB: not a model.json")
        text = where.read_bytes()
        present = {p.name for p in path.iterdir()}
    else:
        where = path
        with checked_zip(path) as zf:
            prefix = _zip_prefix(list(zf.entries), str(path))
            text = zf.read(prefix + MODEL_JSON, MAX_MODEL_JSON_BYTES)
            present = {n[len(prefix):] for n in zf.entries if n.startswith(prefix)}
    spec = BundleSpec.from_json(loads_strict(text, str(where)), str(where))
    missing = [w for w in spec.weights if w not in present]
    if missing:
        raise InputError(f"{where}: weights file(s) {', '.join(missing)} listed in 'weights' are missing from the bundle")
    return Bundle(spec=spec, source=path.resolve())
