"""The model bundle: `model.json` plus one weights file per fold, as a folder or a `.zip` of one.

The bundle is the one contract between training, segmentation, the catalog and Slicer. Its
`model.json` is a `BundleSpec` (bundle_spec.py: the typed fields, their validation against
`schemas/model.schema.json`, documented in docs/bundle.md); this module adds the weights and
the files. Every error names the file and the field.
Weights are never unpickled: safetensors, or `torch.load(weights_only=True)` for `.pt/.pth`.
A zip is read through `safezip.checked_zip`, the same checks as `models import`.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from mednextv2 import atomic
from mednextv2.bundle_spec import (MODEL_JSON, BundleSpec, Channel, InferenceDefaults, Label, NetworkSpec,
                                   Normalization, PreprocessingPlan, Provenance, ResampleOrder, Resampling,
                                   validate_model_json)
from mednextv2.errors import InputError, ResourceError
from mednextv2.safezip import checked_zip
from mednextv2.schema import load_schema, loads_strict, schema_errors
from mednextv2.weights_check import (Shapes, check_header, check_network_size, check_weights_file, expected_shapes,
                                     max_weights_bytes, safetensors_shapes)

log = logging.getLogger(__name__)

__all__ = ["Bundle", "BundleSpec", "Channel", "InferenceDefaults", "Label", "MODEL_JSON", "NetworkSpec",
           "Normalization", "PreprocessingPlan", "Provenance", "Resampling", "ResampleOrder", "load_bundle",
           "load_schema", "schema_errors", "validate_model_json"]

BUNDLE_REPORTS = ("metrics.csv", "training_curve.png")  # `train` copies these beside model.json
PathLike = Union[str, "os.PathLike[str]"]
MAX_MODEL_JSON_BYTES = 16 * 1024 ** 2  # a spec with thousands of labels is < 1 MB
_DS_HEAD = re.compile(r"^out_[1-9]\.")


# ---------------------------------------------------------------- weights sources
def _read_state_dict(path: Path, name: str, where: str) -> Dict[str, Any]:
    """The tensors of weights file `path` (named `name` in the bundle), read from the file, never unpickled."""
    import torch

    if name.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise InputError(f"{where}: weights file {name} is not a valid safetensors file ({e})") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for anything beyond plain tensors and containers
        raise InputError(f"{where}: weights file {name} cannot be loaded safely (weights_only=True): {e}. "
                         "Convert it to safetensors.") from e
    for key in ("state_dict", "network_weights", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise InputError(f"{where}: weights file {name} does not hold a state dict")
    return obj


# safetensors dtypes (https://github.com/huggingface/safetensors, format.md) a MedNeXt state dict can hold
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
_MAX_SAFETENSORS_HEADER = 100 * 1024 ** 2  # the library's own limit


def _stream_safetensors(src: IO[bytes], size: int, name: str, where: str, shapes: Shapes) -> Dict[str, Any]:
    """The tensors of a safetensors stream of `size` bytes (a zip entry), read straight into
    each tensor's memory: no copy of the file is ever held, in memory or on disk. The header is
    checked against the network's `shapes` (`weights_check.check_header`) before any tensor is
    allocated."""
    import torch

    def bad(why: str) -> InputError:
        return InputError(f"{where}: weights file {name} is not a valid safetensors file ({why})")

    def read_into(buffer: memoryview) -> None:
        done = 0
        while done < len(buffer):
            got = src.readinto(buffer[done:done + (1 << 20)])  # a zip entry's readinto reads len(buffer) into a copy
            if not got:
                raise bad("the file ends early")
            done += got

    head = bytearray(8)
    read_into(memoryview(head))
    length = int.from_bytes(head, "little")
    if length > min(size - 8, _MAX_SAFETENSORS_HEADER):
        raise bad(f"a header of {length} bytes in a file of {size}")
    text = bytearray(length)
    read_into(memoryview(text))
    header = loads_strict(bytes(text), f"{where}: {name} header")
    check_header(header, shapes, where, name)
    tensors, offset = {}, 0
    entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
    try:
        entries.sort(key=lambda kv: kv[1]["data_offsets"][0])
        for key, info in entries:
            dtype = getattr(torch, _SAFETENSORS_DTYPES[info["dtype"]])
            shape = [int(d) for d in info["shape"]]
            start, end = (int(v) for v in info["data_offsets"])
            tensor = torch.empty(shape, dtype=dtype)
            if start != offset or end - start != tensor.numel() * tensor.element_size():
                raise bad(f"tensor {key!r} has offsets {start}..{end}, expected {offset}.."
                          f"{offset + tensor.numel() * tensor.element_size()}")
            if tensor.numel():
                read_into(memoryview(tensor.view(-1).view(torch.uint8).numpy()))
            tensors[key], offset = tensor, end
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # a field missing or of the wrong kind
        raise bad(f"header entry {e}") from e
    if 8 + length + offset != size:
        raise bad(f"{size - 8 - length - offset} bytes beyond the last tensor")
    src.read(1)  # reaches the entry's end, where a zip checks its CRC, in every Python version
    return tensors


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
    @contextlib.contextmanager
    def _weight_files(self) -> Iterator[List[Tuple[str, Path]]]:
        """(name, file) per weights file: the bundle folder's own files, or a zip's entries streamed
        into a temporary folder, so no entry is ever held whole in memory."""
        if self.source is None:
            raise InputError("bundle has no source folder and no in-memory weights")
        shapes = self._expected_shapes()  # the sizes to expect, before a byte of weights is read
        if self.source.is_dir():
            out = []
            for name in self.weights:
                path = self.source / name
                if not path.is_file():
                    raise InputError(f"{self.source / MODEL_JSON}: weights file {name} is missing from the bundle folder")
                check_weights_file(path, shapes, self._where())
                out.append((name, path))
            yield out
            return
        tmp = Path(tempfile.mkdtemp(prefix="mednextv2-weights-"))
        try:
            with checked_zip(self.source) as zf:
                prefix = _zip_prefix(list(zf.entries), str(self.source))
                out = []
                for name in self.weights:
                    entry = self._zip_weights_entry(zf, prefix, name)
                    target = tmp / name.replace("/", "_")  # the bundle's name: the checks' messages use it
                    try:  # at most what the network's weights can take, whatever the zip's headers say
                        zf.extract(entry, target, max_weights_bytes(shapes))
                    except OSError as e:
                        raise ResourceError(f"cannot unpack weights file {name} of {self.source} into {tmp}: "
                                            f"{e.strerror or e}") from e
                    check_weights_file(target, shapes, self._where())
                    out.append((name, target))
            yield out
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _zip_weights_entry(self, zf, prefix: str, name: str) -> str:
        """The zip entry of weights file `name`; refused by name when the zip lacks it."""
        if prefix + name not in zf.entries:
            raise InputError(f"{self.source}: weights file {name} is missing from the zip")
        return prefix + name

    def load_state_dicts(self) -> List[Mapping[str, Any]]:
        """One state dict per fold, on the CPU."""
        if self._state_dicts is not None:
            return list(self._state_dicts)
        if self.source is not None and not self.source.is_dir() and all(w.endswith(".safetensors") for w in self.weights):
            shapes = self._expected_shapes()  # the sizes to expect, before a byte of weights is read
            with checked_zip(self.source) as zf:
                prefix = _zip_prefix(list(zf.entries), str(self.source))
                out = []
                for name in self.weights:
                    entry = self._zip_weights_entry(zf, prefix, name)
                    with zf.open(entry, max_weights_bytes(shapes)) as src:
                        out.append(_stream_safetensors(src, zf.entries[entry].file_size, name, self._where(), shapes))
                return out
        with self._weight_files() as files:
            return [_read_state_dict(path, name, self._where()) for name, path in files]

    def build_models(self, device: Any = "cpu") -> List[Any]:
        """One MedNeXt per fold, weights loaded strictly, eval mode, deep supervision off, on `device`."""
        from mednextv2.network import MedNeXt

        config = self._config()
        if self._state_dicts is not None:  # in memory; weights from files are checked before they are read
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
        if path.suffix.lower() == ".zip":
            with self._files_to_write() as files, atomic.atomic_path(path) as tmp, open(tmp, "xb") as f, \
                    zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
                for name, data in files:
                    zf.write(data, name) if isinstance(data, Path) else zf.writestr(name, data)
        else:
            if path.exists() and not path.is_dir():
                raise InputError(f"cannot save bundle: {path} exists and is not a folder")
            # The old folder is deleted after the swap: only ever one the engine wrote (docs/promise.md).
            foreign = foreign_entries(path) if path.exists() else []
            if foreign:
                raise InputError(f"cannot save bundle: {path} holds files that are not a model bundle's "
                                 f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
                                 "choose a new or empty folder")
            with self._files_to_write() as files, atomic.atomic_folder(path) as tmp:
                for name, data in files:
                    shutil.copyfile(data, tmp / name) if isinstance(data, Path) else (tmp / name).write_bytes(data)
        log.debug("saved model bundle %s to %s", self.id, path)
        return path

    @contextlib.contextmanager
    def _files_to_write(self) -> Iterator[List[Tuple[str, Union[bytes, Path]]]]:
        """(name, bytes or a file to copy) per file of the bundle."""
        files: List[Tuple[str, Union[bytes, Path]]] = [
            (MODEL_JSON, (json.dumps(self.spec.to_json(), indent=2, allow_nan=False) + "\n").encode("utf-8"))]
        if self._state_dicts is None:
            with self._weight_files() as weights:
                yield files + list(weights)
            return
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
        yield files


def default_weight_names(n_folds: int) -> Tuple[str, ...]:
    return ("weights.safetensors",) if n_folds == 1 else tuple(f"fold_{i}.safetensors" for i in range(n_folds))


def foreign_entries(folder: Path) -> List[str]:
    """What stops `folder` from being replaced as a bundle the engine wrote, first foreign file
    first ("name (why)" where the name alone does not say): empty for an empty folder or a bundle.

    A name or a model.json can be made by anyone, so the rule rests on content: model.json must be
    a valid spec of this format version, every entry a regular file a bundle holds (model.json,
    its weights, the training reports), each weights file valid safetensors whose tensor names
    and shapes are the recorded network's."""
    names = sorted(os.listdir(folder))
    if not names:
        return []
    manifest = folder / MODEL_JSON
    try:
        if manifest.is_symlink() or not manifest.is_file():
            raise InputError("no model.json")
        if manifest.stat().st_size > MAX_MODEL_JSON_BYTES:
            raise InputError(f"larger than {MAX_MODEL_JSON_BYTES >> 20} MB")
        spec = BundleSpec.from_json(loads_strict(manifest.read_bytes(), str(manifest)), str(manifest))
    except (InputError, OSError, RecursionError) as e:
        if not manifest.exists():
            return names
        why = str(e).strip().splitlines()
        return [f"{MODEL_JSON} (not a valid model.json: {why[-1].strip() if why else e})"] + \
            [n for n in names if n != MODEL_JSON]
    foreign = []
    for name in names:
        path = folder / name
        if name not in {MODEL_JSON, *BUNDLE_REPORTS, *spec.weights} or path.is_symlink() or not path.is_file():
            foreign.append(name)
        elif name in spec.weights:
            problem = _weights_problem(path, spec.network)
            if problem:
                foreign.append(f"{name} ({problem})")
        elif name in BUNDLE_REPORTS and not _is_report(path):
            foreign.append(f"{name} (not a training report)")
    return foreign


def is_complete_bundle(folder: Path, allowed: Sequence[str] = ()) -> bool:
    """`folder` is a whole bundle the engine wrote: nothing foreign (`foreign_entries`, less the
    names in `allowed`) and every weights file present."""
    if not (folder / MODEL_JSON).is_file() or [f for f in foreign_entries(folder) if f not in allowed]:
        return False
    try:
        load_bundle(folder)
    except InputError:
        return False
    return True


def _weights_problem(path: Path, network: NetworkSpec) -> Optional[str]:
    """Why `path` is not the weights of `network` as a bundle holds them (safetensors, the
    network's tensor names and shapes without the deep-supervision heads), or None. Only the
    header is read (`weights_check.safetensors_shapes`)."""
    if not path.name.endswith(".safetensors"):
        return "not a safetensors file"
    try:
        found = safetensors_shapes(path, str(path))
    except InputError as e:
        why = str(e).split(f"weights file {path.name} ", 1)[-1]
        return why[3:] if why.startswith("is ") else why
    try:
        expected = {k: v for k, v in expected_shapes(network.config()).items() if not _DS_HEAD.match(k)}
    except (TypeError, ValueError, KeyError) as e:
        return f"the recorded network cannot be built: {e}"
    if found != expected:
        odd = sorted(set(found) ^ set(expected)) or sorted(k for k in found if found[k] != expected[k])
        return f"its tensors are not the recorded network's (first difference: {odd[0]})"
    return None


def _is_report(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(8)
    return head == b"\x89PNG\r\n\x1a\n" if path.suffix == ".png" else head.startswith(b"epoch")


# ---------------------------------------------------------------- loading
_WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".model")


def _check_bundle_file(path: Path) -> None:
    """A file given as a model must be a bundle's .zip; say what a weights file or model.json is."""
    expected = f"a model is a bundle folder (holding {MODEL_JSON} and its weights), that folder as a .zip, or a model id"
    if not path.is_file():
        raise InputError(f"model {path} is not a regular file or folder; {expected}")
    if path.suffix.lower() == ".zip" or zipfile.is_zipfile(path):
        return  # checked_zip says what is wrong with a zip
    if path.name == MODEL_JSON or path.suffix.lower() in _WEIGHTS_SUFFIXES:
        raise InputError(f"model {path} is one file of a bundle, not the bundle: give its folder {path.parent} "
                         f"(if it holds {MODEL_JSON}), or import nnU-Net results with `mednextv2 models import`; "
                         f"{expected}")
    raise InputError(f"model {path} is neither a bundle folder nor a .zip of one; {expected}")


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
        _check_bundle_file(path)
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
