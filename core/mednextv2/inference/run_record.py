"""Run records of batch segmentation: which case the engine finished, from what, into what.

After a case's result files are in place, the engine writes one JSON file for it,
`OUT/.mednextv2-run/<case>.json`, atomically (`atomic.write_bytes`). One file per case, so the
ranks of a sharded run (and nodes on a shared file system) never write the same file, and a
reader sees a whole record or none. A record holds the case's inputs (name, size, mtime,
SHA-256), what else decides the result (`RunIdentity`: engine version, model id and digest, the
options that change the labels, the output format) and each result file's name and SHA-256.

`segment --skip-done` skips a case only when its record is the engine's (its `kind` marker and
format version), is for the same inputs, model and options, and every recorded output file is
still there with the recorded SHA-256; an output file without a record is never trusted.
"""
from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from mednextv2 import __version__
from mednextv2.atomic import sha256_file, write_bytes
from mednextv2.errors import InputError
from mednextv2.schema import loads_strict

RECORD_FOLDER = ".mednextv2-run"
KIND = "mednextv2 segment run record"  # the marker: only the engine writes records
FORMAT_VERSION = 1


def _canonical(value: Any) -> Any:
    """JSON's view of a value (tuples become lists), so a record read back compares equal."""
    return json.loads(json.dumps(value, sort_keys=True))


def model_digest(bundle) -> str:
    """SHA-256 over the bundle's spec and its weights: the weights files of a folder, the whole
    zip, or the tensors of an in-memory bundle."""
    digest = hashlib.sha256(json.dumps(bundle.spec.to_json(), sort_keys=True).encode("utf-8"))
    source = bundle.source
    if source is not None and source.is_dir():
        for name in bundle.weights:
            digest.update(f"{name}:{sha256_file(source / name)};".encode("utf-8"))
    elif source is not None:
        digest.update(sha256_file(source).encode("ascii"))
    else:
        for state in bundle.load_state_dicts():
            for key in sorted(state):
                tensor = state[key].detach().cpu().contiguous()
                digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode("utf-8"))
                digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class RunIdentity:
    """Everything besides the inputs that decides a case's result files."""
    engine_version: str
    model_id: str
    model_digest: str
    options: Mapping[str, Any]  # JSON-able: step, mirror axes, fast, structures, largest component, format

    @classmethod
    def create(cls, bundle, options: Mapping[str, Any]) -> "RunIdentity":
        return cls(__version__, bundle.id, model_digest(bundle), _canonical(dict(options)))

    def to_json(self) -> Dict[str, Any]:
        return {"engine_version": self.engine_version, "model_id": self.model_id,
                "model_digest": self.model_digest, "options": dict(self.options)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "RunIdentity":
        return cls(str(doc["engine_version"]), str(doc["model_id"]), str(doc["model_digest"]),
                   _canonical(dict(doc["options"])))

    def difference(self, other: "RunIdentity") -> Optional[str]:
        """Why a result made under `other` is not one of this run's; None when it is."""
        if (other.model_id, other.model_digest) != (self.model_id, self.model_digest):
            return f"recorded with another model ({other.model_id}, digest {other.model_digest[:12]})"
        if other.options != self.options:
            changed = sorted(k for k in set(self.options) | set(other.options)
                             if self.options.get(k) != other.options.get(k))
            return f"recorded with other options ({', '.join(changed)})"
        if other.engine_version != self.engine_version:
            return f"recorded by mednextv2 {other.engine_version}"
        return None


def input_identity(paths: Sequence[Path]) -> Tuple[Dict[str, Any], ...]:
    """Each input file's name, size, mtime and SHA-256 (the content decides; the mtime is kept for people)."""
    out = []
    for path in paths:
        st = Path(path).stat()
        out.append({"name": Path(path).name, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                    "sha256": sha256_file(path)})
    return tuple(out)


def _same_inputs(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> bool:
    key = lambda f: (f["name"], f["size"], f["sha256"])  # noqa: E731
    return [key(f) for f in a] == [key(f) for f in b]


@dataclass(frozen=True)
class CaseRecord:
    """One finished case: its inputs, the run's identity and the result files (name, SHA-256)."""
    case: str
    inputs: Tuple[Mapping[str, Any], ...]
    identity: RunIdentity
    outputs: Tuple[Mapping[str, Any], ...]
    rank: int
    world_size: int
    finished: str  # ISO 8601, UTC
    statistics: Optional[Tuple[Mapping[str, Any]]] = None  # the case's --statistics rows, when they were made

    def to_json(self) -> Dict[str, Any]:
        doc = {"kind": KIND, "format_version": FORMAT_VERSION, "case": self.case, "inputs": list(self.inputs),
               "run": self.identity.to_json(), "outputs": list(self.outputs), "rank": self.rank,
               "world_size": self.world_size, "finished": self.finished}
        if self.statistics is not None:
            doc["statistics"] = list(self.statistics)
        return doc

    @classmethod
    def from_json(cls, doc: Any, where: str) -> "CaseRecord":
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            raise InputError(f"{where} is not a run record the engine wrote; move it out of {Path(where).parent}")
        if doc.get("format_version") != FORMAT_VERSION:
            raise InputError(f"{where}: run record format {doc.get('format_version')!r}, this engine reads "
                             f"{FORMAT_VERSION}; move the folder {Path(where).parent} away to segment every case again")
        try:
            return cls(str(doc["case"]), tuple(_canonical(doc["inputs"])), RunIdentity.from_json(doc["run"]),
                       tuple(_canonical(doc["outputs"])), int(doc["rank"]), int(doc["world_size"]),
                       str(doc["finished"]),
                       None if doc.get("statistics") is None else tuple(_canonical(doc["statistics"])))
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{where}: damaged run record ({e!r}); delete it to segment that case again") from e


class RunRecords:
    """The record folder of one output folder."""

    def __init__(self, output_dir: Path) -> None:
        self.folder = Path(output_dir) / RECORD_FOLDER

    def path(self, case: str) -> Path:
        return self.folder / f"{case}.json"

    def check(self, cases: Sequence[str]) -> None:
        """Refuse, before any work, a record folder or record name holding something the engine did not write."""
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"{self.folder} is not a folder; the engine keeps its run records there: "
                             "move the file away")
        for case in cases:
            path = self.path(case)
            if path.exists() or path.is_symlink():
                self.read(case)

    def read(self, case: str) -> Optional[CaseRecord]:
        path = self.path(case)
        if not (path.exists() or path.is_symlink()):
            return None
        if path.is_symlink() or not path.is_file():
            raise InputError(f"{path} is not a run record the engine wrote; move it out of {self.folder}")
        try:
            doc = loads_strict(path.read_bytes(), str(path))
        except ValueError as e:  # InputError is one; so is a decoding error
            raise InputError(f"{path} is not a run record the engine wrote (not valid JSON); move it out of "
                             f"{self.folder}") from e
        return CaseRecord.from_json(doc, str(path))

    def redo_reason(self, case: str, inputs: Sequence[Mapping[str, Any]], identity: RunIdentity,
                    result_files: Sequence[Path], need_statistics: bool = False) -> Optional[str]:
        """None when the case's recorded result stands; else why it must be segmented again."""
        record = self.read(case)
        if record is None:
            return "no run record"
        if not _same_inputs(record.inputs, inputs):
            return "its input changed since it was recorded"
        why = identity.difference(record.identity)
        if why:
            return why
        if need_statistics and record.statistics is None:
            return "recorded without --statistics"
        expected = {Path(f).name for f in result_files}
        recorded = {o["name"]: o["sha256"] for o in record.outputs}
        if set(recorded) != expected:
            return "recorded with other output files"
        for path in result_files:
            path = Path(path)
            if not path.is_file():
                return f"output {path.name} is missing"
            if sha256_file(path) != recorded[path.name]:
                return f"output {path.name} changed since it was written"
        return None

    def statistics(self, case: str) -> List[Dict[str, Any]]:
        """The --statistics rows recorded with a finished case (none if it was recorded without)."""
        record = self.read(case)
        return [dict(row) for row in (record.statistics or ())] if record is not None else []

    def write(self, case: str, inputs: Sequence[Mapping[str, Any]], identity: RunIdentity,
              result_files: Sequence[Path], rank: int = 0, world_size: int = 1,
              statistics: Optional[Sequence[Mapping[str, Any]]] = None) -> Path:
        """Record a finished case (after its result files are in place), with its statistics rows if made."""
        self.folder.mkdir(exist_ok=True)
        outputs = tuple({"name": Path(f).name, "sha256": sha256_file(f)} for f in result_files)
        finished = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
        record = CaseRecord(case, tuple(inputs), identity, outputs, rank, world_size, finished,
                            None if statistics is None else tuple(_canonical(list(statistics))))
        text = json.dumps(record.to_json(), indent=1, sort_keys=True) + "\n"
        return write_bytes(self.path(case), text.encode("utf-8"))

