"""The model bundle: `model.json` plus one weights file per fold, as a folder or a `.zip` of one.

The bundle is the one contract between training, segmentation, the catalog and Slicer; its
schema ships in `schemas/model.schema.json` and is documented in docs/bundle.md. Loading checks
the schema and the cross-field rules, and every error names the file and the field.
Weights are never unpickled: safetensors, or `torch.load(weights_only=True)` for `.pt/.pth`.
"""
from __future__ import annotations

import copy
import io
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from mednextv2.errors import InputError

log = logging.getLogger(__name__)

MODEL_JSON = "model.json"
BUNDLE_REPORTS = ("metrics.csv", "training_curve.png")  # `train` copies these beside model.json
SCHEMA_PATH = Path(__file__).with_name("schemas") / "model.schema.json"
PathLike = Union[str, "os.PathLike[str]"]
_DS_HEAD = re.compile(r"^out_[1-9]\.")


@dataclass(frozen=True)
class Label:
    value: int
    name: str
    color: Tuple[int, int, int]
    terminology: Optional[Mapping[str, Any]] = None


@dataclass(frozen=True)
class Normalization:
    scheme: str  # "ct" | "zscore" | "none"
    clip: Optional[Tuple[float, float]] = None
    mean: float = 0.0
    std: float = 1.0


@dataclass(frozen=True)
class PreprocessingPlan:
    target_spacing: Optional[Tuple[float, float, float]]  # (z, y, x) mm; None = keep the input spacing
    normalization: Tuple[Normalization, ...]
    crop_to_nonzero: bool = False
    orientation: str = "LPS"  # "LPS": permute/flip array axes to the nearest LPS order first


@dataclass(frozen=True)
class InferenceDefaults:
    patch_size: Tuple[int, int, int]
    step: float = 0.5
    mirror_axes: Tuple[int, ...] = (0, 1, 2)
    fast_spacing: Optional[Tuple[float, float, float]] = None


# ---------------------------------------------------------------- schema check
@lru_cache(maxsize=1)
def load_schema() -> Dict[str, Any]:
    """The JSON schema of model.json shipped in the package."""
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return json.load(f)


_JSON_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _type_ok(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _JSON_TYPES[name])


def _where(path: str) -> str:
    return path or "(top level)"


def schema_errors(value: Any, schema: Mapping[str, Any], path: str = "", root: Optional[Mapping] = None) -> List[str]:
    """Errors of `value` against the subset of JSON Schema the bundle schema uses.

    A small validator because jsonschema is not a runtime dependency (Slicer's Python must not
    grow); the test suite checks that it agrees with jsonschema on the shipped schema.
    """
    root = root if root is not None else schema
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return schema_errors(value, root["$defs"][name], path, root)
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_type_ok(value, t) for t in types):
            return [f"{_where(path)}: expected {' or '.join(types)}, got {json.dumps(value)[:60]}"]
    errors: List[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{_where(path)}: must be one of {schema['enum']}, got {json.dumps(value)[:60]}")
    if _type_ok(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{_where(path)}: must be >= {schema['minimum']}, got {value}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{_where(path)}: must be <= {schema['maximum']}, got {value}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{_where(path)}: must be > {schema['exclusiveMinimum']}, got {value}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{_where(path)}: must not be empty")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{_where(path)}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{_where(path)}: needs at least {schema['minItems']} item(s), got {len(value)}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{_where(path)}: takes at most {schema['maxItems']} item(s), got {len(value)}")
        if "items" in schema:
            for i, item in enumerate(value):
                errors += schema_errors(item, schema["items"], f"{path}[{i}]", root)
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                errors.append(f"{path + '.' if path else ''}{key}: required field is missing")
        props = schema.get("properties", {})
        for key, item in value.items():
            sub = f"{path}.{key}" if path else key
            if key in props:
                errors += schema_errors(item, props[key], sub, root)
            elif schema.get("additionalProperties", True) is False:
                errors.append(f"{sub}: unknown field (allowed: {', '.join(props)})")
    return errors


def _semantic_errors(spec: Mapping[str, Any]) -> List[str]:
    """Rules that JSON Schema cannot say: counts and values that must agree across fields."""
    errors = []
    net = spec["network"]
    n_classes, in_channels = net["n_classes"], net["in_channels"]
    values = [lab["value"] for lab in spec["labels"]]
    if sorted(values) != list(range(1, n_classes)):
        errors.append(f"labels: values must be 1..{n_classes - 1} (one per network.n_classes head channel "
                      f"except background 0), got {sorted(values)}")
    names = [lab["name"] for lab in spec["labels"]]
    if len(set(names)) != len(names):
        errors.append(f"labels: names must be unique, got {names}")
    if len(spec["channels"]) != in_channels:
        errors.append(f"channels: network.in_channels is {in_channels} but {len(spec['channels'])} channel(s) are listed")
    norms = spec["preprocessing"]["normalization"]
    if len(norms) != in_channels:
        errors.append(f"preprocessing.normalization: needs one entry per input channel ({in_channels}), got {len(norms)}")
    for i, norm in enumerate(norms):
        if norm["scheme"] == "ct" and not {"clip", "mean", "std"} <= set(norm):
            errors.append(f"preprocessing.normalization[{i}]: scheme 'ct' needs clip, mean and std")
        if "clip" in norm and norm["clip"][0] >= norm["clip"][1]:
            errors.append(f"preprocessing.normalization[{i}].clip: low must be below high, got {norm['clip']}")
    patch = spec["inference"]["patch_size"]
    if any(p % 16 for p in patch):
        errors.append(f"inference.patch_size: each size must be divisible by 16 (4 downsamplings), got {patch}")
    if len(set(spec["weights"])) != len(spec["weights"]):
        errors.append("weights: file names must be unique")
    return errors


def validate_spec(spec: Any, where: str = MODEL_JSON) -> None:
    """Raise InputError listing every problem of a model.json document, each with its field."""
    if not isinstance(spec, dict):
        raise InputError(f"{where}: expected a JSON object at the top level")
    errors = schema_errors(spec, load_schema())
    if not errors:
        errors = _semantic_errors(spec)
    if errors:
        raise InputError(f"invalid model bundle {where}:\n  " + "\n  ".join(errors))


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


def _zip_prefix(zf: zipfile.ZipFile, where: str) -> str:
    """model.json may sit at the zip root or inside a single top folder."""
    names = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == MODEL_JSON and n.count("/") <= 1]
    if not names:
        raise InputError(f"{where}: no {MODEL_JSON} at the root of the zip or in its top folder")
    return min(names, key=len)[: -len(MODEL_JSON)]


# ---------------------------------------------------------------- the bundle
@dataclass(frozen=True, eq=False)
class Bundle:
    """A validated model bundle. Weights come from `source` (folder or zip) or from memory."""

    spec: Mapping[str, Any]
    source: Optional[Path] = None
    _state_dicts: Optional[Tuple[Mapping[str, Any], ...]] = field(default=None, repr=False)

    # ---- construction
    @classmethod
    def create(cls, spec: Mapping[str, Any], state_dicts: Sequence[Mapping[str, Any]]) -> "Bundle":
        """A new in-memory bundle (training, import). `spec["weights"]` defaults to fold_{i}.safetensors."""
        spec = copy.deepcopy(dict(spec))
        spec.setdefault("format_version", 1)
        if "weights" not in spec:
            spec["weights"] = [f"fold_{i}.safetensors" if len(state_dicts) > 1 else "weights.safetensors"
                               for i in range(len(state_dicts))]
        validate_spec(spec, "new bundle")
        if len(spec["weights"]) != len(state_dicts):
            raise InputError(f"new bundle: weights lists {len(spec['weights'])} file(s) but {len(state_dicts)} state dict(s) were given")
        return cls(spec=spec, source=None, _state_dicts=tuple(state_dicts))

    # ---- views on the spec
    @property
    def id(self) -> str:
        return self.spec["id"]

    @property
    def title(self) -> str:
        return self.spec["title"]

    @property
    def network(self) -> Mapping[str, Any]:
        return self.spec["network"]

    @property
    def n_classes(self) -> int:
        return int(self.spec["network"]["n_classes"])

    @property
    def in_channels(self) -> int:
        return int(self.spec["network"]["in_channels"])

    @property
    def weights(self) -> Tuple[str, ...]:
        return tuple(self.spec["weights"])

    @property
    def labels(self) -> Tuple[Label, ...]:
        return tuple(Label(int(d["value"]), d["name"], tuple(int(c) for c in d["color"]), d.get("terminology"))
                     for d in sorted(self.spec["labels"], key=lambda d: d["value"]))

    @property
    def channels(self) -> Tuple[Tuple[str, str], ...]:
        """(name, modality) per input channel, in network order."""
        return tuple((c["name"], c["modality"]) for c in self.spec["channels"])

    @property
    def preprocessing(self) -> PreprocessingPlan:
        p = self.spec["preprocessing"]
        norms = tuple(Normalization(n["scheme"], tuple(n["clip"]) if "clip" in n else None,
                                    float(n.get("mean", 0.0)), float(n.get("std", 1.0)))
                      for n in p["normalization"])
        spacing = p.get("target_spacing")
        return PreprocessingPlan(tuple(float(s) for s in spacing) if spacing else None, norms,
                                 bool(p.get("crop_to_nonzero", False)), p.get("orientation", "LPS"))

    @property
    def inference(self) -> InferenceDefaults:
        i = self.spec["inference"]
        fast = i.get("fast_spacing")
        return InferenceDefaults(tuple(int(s) for s in i["patch_size"]), float(i.get("step", 0.5)),
                                 tuple(int(a) for a in i.get("mirror_axes", (0, 1, 2))),
                                 tuple(float(s) for s in fast) if fast else None)

    # ---- weights
    def _raw_weights(self) -> List[Tuple[str, bytes]]:
        if self.source is None:
            raise InputError("bundle has no source folder and no in-memory weights")
        out = []
        if self.source.is_dir():
            for name in self.weights:
                path = self.source / name
                if not path.is_file():
                    raise InputError(f"{self.source / MODEL_JSON}: weights file {name} is missing from the bundle folder")
                out.append((name, path.read_bytes()))
            return out
        with zipfile.ZipFile(self.source) as zf:
            prefix = _zip_prefix(zf, str(self.source))
            for name in self.weights:
                try:
                    out.append((name, zf.read(prefix + name)))
                except KeyError as e:
                    raise InputError(f"{self.source}: weights file {name} is missing from the zip") from e
        return out

    def load_state_dicts(self) -> List[Mapping[str, Any]]:
        """One state dict per fold, on the CPU."""
        if self._state_dicts is not None:
            return list(self._state_dicts)
        where = str(self.source / MODEL_JSON if self.source.is_dir() else self.source)
        return [_read_state_dict(data, name, where) for name, data in self._raw_weights()]

    def build_models(self, device: Any = "cpu") -> List[Any]:
        """One MedNeXt per fold, weights loaded strictly, eval mode, deep supervision off, on `device`."""
        from mednextv2.network import MedNeXt, MedNeXtConfig

        try:
            config = MedNeXtConfig.from_dict(dict(self.network))
        except (TypeError, ValueError, KeyError) as e:
            raise InputError(f"{self._where()}: network: {e}") from e
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
            _write_zip_atomic(path, files)
        else:
            _write_folder_atomic(path, files)
        log.debug("saved model bundle %s to %s", self.id, path)
        return path

    def _files_to_write(self) -> List[Tuple[str, bytes]]:
        files = [(MODEL_JSON, (json.dumps(self.spec, indent=2) + "\n").encode("utf-8"))]
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


def _default_mode(base: int) -> int:
    """`base` less the process umask: what a plain open()/mkdir() would give."""
    mask = os.umask(0o022)
    os.umask(mask)
    return base & ~mask


def _write_zip_atomic(path: Path, files: Sequence[Tuple[str, bytes]]) -> None:
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        with open(tmp, "xb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
            for name, data in files:
                zf.writestr(name, data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def foreign_entries(folder: Path) -> List[str]:
    """Entries of an existing folder that are not a bundle's own files (model.json, the weights
    it lists, the training reports): all of them when it has no readable model.json."""
    try:
        weights = json.loads((folder / MODEL_JSON).read_text(encoding="utf-8"))["weights"]
        own = {MODEL_JSON, *BUNDLE_REPORTS, *(w for w in weights if isinstance(w, str))}
    except (OSError, ValueError, KeyError, TypeError):
        own = set()
    return [n for n in sorted(os.listdir(folder)) if n not in own or not (folder / n).is_file()]


def _write_folder_atomic(path: Path, files: Sequence[Tuple[str, bytes]]) -> None:
    if path.exists() and not path.is_dir():
        raise InputError(f"cannot save bundle: {path} exists and is not a folder")
    # The old folder is deleted after the swap: only ever one the engine wrote (docs/promise.md).
    foreign = foreign_entries(path) if path.exists() else []
    if foreign:
        raise InputError(f"cannot save bundle: {path} holds files that are not a model bundle's "
                         f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); choose a new or empty folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, _default_mode(0o777))  # mkdtemp's 0700 would survive the rename
    old = None
    try:
        for name, data in files:
            (tmp / name).write_bytes(data)
        if path.exists():  # a folder cannot be replaced in one rename: move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "bundle")
        os.replace(tmp, path)
    except BaseException:
        if old is not None and not path.exists():
            os.replace(old / "bundle", path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


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
        text = where.read_bytes()
        present = {p.name for p in path.iterdir()}
    else:
        where = path
        try:
            with zipfile.ZipFile(path) as zf:
                prefix = _zip_prefix(zf, str(path))
                text = zf.read(prefix + MODEL_JSON)
                present = {n[len(prefix):] for n in zf.namelist() if n.startswith(prefix)}
        except zipfile.BadZipFile as e:
            raise InputError(f"{path}: not a bundle folder and not a valid zip file") from e
    try:
        spec = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{where}: not valid JSON ({e})") from e
    validate_spec(spec, str(where))
    missing = [w for w in spec["weights"] if w not in present]
    if missing:
        raise InputError(f"{where}: weights file(s) {', '.join(missing)} listed in 'weights' are missing from the bundle")
    return Bundle(spec=spec, source=path.resolve())
