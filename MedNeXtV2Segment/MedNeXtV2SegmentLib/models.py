"""Adapter between the panel's model selector and the engine's model catalog.

The catalog (core/mednextv2/store/catalog.py, `mednextv2 models ...`) is owned by the engine. The panel
only asks `mednextv2 models list --json` (an engine run like any other: never on the GUI thread)
and reads a few fields, tolerating the ones it does not know, so a newer catalog never breaks an
older panel. The list is read and kept for both modules by model_list_loader.py. Download and
import run through the same process runner as a segmentation (with progress and Cancel).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .labels import LabelTableError, load_bundle


class CatalogError(RuntimeError):
    """The model list could not be read; the message carries the engine's own error."""


@dataclass(frozen=True)
class ModelChoice:
    id: str
    title: str
    modality: str = ""
    size_bytes: Optional[int] = None
    downloaded: bool = False
    path: str = ""  # local bundle folder once downloaded or imported
    labels: Tuple[str, ...] = field(default_factory=tuple)
    cpu_s: Optional[float] = None
    gpu_s: Optional[float] = None
    min_gpu_memory_gb: Optional[float] = None
    channels: Tuple[Tuple[str, str], ...] = ()  # (name, modality) per input, from the bundle


def model_choice(record: Mapping) -> ModelChoice:
    if not isinstance(record, Mapping) or not isinstance(record.get("id"), str):
        raise CatalogError(f"catalog entry without an 'id': {record!r}")
    labels = record.get("labels") or []
    names = tuple(l["name"] if isinstance(l, Mapping) else str(l) for l in labels)
    timings = record.get("timings") or {}
    size = record.get("size")
    path = str(record.get("path") or "")
    choice = ModelChoice(
        id=record["id"], title=str(record.get("title") or record["id"]),
        modality=str(record.get("modality") or ""),
        size_bytes=int(size) if isinstance(size, (int, float)) and not isinstance(size, bool) else None,
        # `installed` is "yes", "other version", or where an import came from; "no" when absent
        downloaded=bool(path) and record.get("installed") not in ("no", False, None),
        path=path, labels=names, cpu_s=timings.get("cpu_s"), gpu_s=timings.get("gpu_s"),
        min_gpu_memory_gb=record.get("min_gpu_memory_gb"))
    return with_bundle_details(choice)


def with_bundle_details(choice: ModelChoice) -> ModelChoice:
    """Labels and modality from an installed bundle's model.json (the list rows do not carry them)."""
    if not choice.path or not Path(choice.path).exists():
        return choice
    try:
        bundle = load_bundle(Path(choice.path))
    except LabelTableError:
        return choice  # listed but unreadable: the run will report the exact problem
    modality = "+".join(dict.fromkeys(m for _, m in bundle.channels))
    return replace(choice, labels=choice.labels or tuple(l.name for l in bundle.labels),
                   modality=choice.modality or modality, title=bundle.title or choice.title,
                   channels=tuple(bundle.channels))


def channel_prompts(channels: Sequence[Tuple[str, str]]) -> List[str]:
    """One selector label per model input: 'Input volume:' for a one-input model, else
    'T1 (MR):', 'FLAIR (MR):' ... in the bundle's channel order (the engine's input order)."""
    if len(channels) <= 1:
        return ["Input volume:"]
    return [f"{name} ({modality}):" if modality and modality != name else f"{name}:" for name, modality in channels]


def models_for_modality(choices: Sequence[ModelChoice], modality: str) -> List[ModelChoice]:
    """The models for an input of `modality` ('CT', 'MR'); all of them when it is unknown, and a
    model whose modality is not known is always offered."""
    if not modality:
        return list(choices)
    wanted = modality.upper()
    return [c for c in choices if not c.modality or wanted in c.modality.upper().split("+")]


def parse_model_list(text: str) -> List[ModelChoice]:
    """Parse `models list --json`: a list of entries, or an object with a 'models' list."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise CatalogError(f"`mednextv2 models list --json` did not print JSON: {e}") from e
    if isinstance(data, Mapping):
        data = data.get("models")
    if not isinstance(data, list):
        raise CatalogError("`mednextv2 models list --json` must print a list of models")
    return [model_choice(r) for r in data]


def describe_model(choice: ModelChoice) -> str:
    """Selector text: 'Lung tumour (CT) - CT - 120.3 MB - downloaded' (no size where the catalog has none)."""
    from mednextv2.disk import format_size  # the engine's units; imported late, as use_shipped_engine() asks

    parts = [choice.title]
    if choice.modality:
        parts.append(choice.modality)
    if choice.size_bytes:
        parts.append(format_size(choice.size_bytes))
    parts.append("downloaded" if choice.downloaded else "not downloaded")
    return " - ".join(parts)


def time_hint(choice: Optional[ModelChoice], device: str, tta: bool = True, cuda: Optional[bool] = None) -> str:
    """Expected time per image from the catalog's measured timings; '' when unknown.

    `cuda` is what the engine's Python reported (None: not known yet). Without a CUDA GPU an
    'auto' or 'cuda' run goes to the CPU, and the user is told before pressing Segment."""
    from .progress import format_duration

    if choice is None:
        return ""
    if cuda is False and device in ("auto", "cuda"):
        if choice.cpu_s is None:
            return ("No CUDA GPU found: this runs on the CPU, which can take many minutes; this model has no "
                    "measured CPU time yet.")
        return (f"No CUDA GPU found: expect about {format_duration(choice.cpu_s)} per image on the CPU "
                f"(measured{'' if tta else '; faster without TTA'}).")
    if device == "cpu":
        seconds, where = choice.cpu_s, "CPU"
    else:
        seconds, where = (choice.gpu_s, "GPU") if choice.gpu_s is not None else (choice.cpu_s, "CPU")
    if seconds is None:
        return "No measured time for this model yet."
    hint = f"About {format_duration(seconds)} per image on {where} (measured)"
    if not tta:
        hint += "; faster without TTA"
    if device != "cpu" and choice.min_gpu_memory_gb:
        hint += f"; needs about {choice.min_gpu_memory_gb:g} GB of GPU memory"
    return hint + "."


def read_model_list(returncode: Optional[int], stdout: str, stderr_tail: str) -> List[ModelChoice]:
    """The choices printed by a finished `mednextv2 models list --json` run, or CatalogError."""
    if returncode != 0:
        raise CatalogError(f"`mednextv2 models list` failed (exit code {returncode}):\n{stderr_tail.strip()[-2000:]}")
    return parse_model_list(stdout)


def models_by_id(choices: Sequence[ModelChoice]) -> Dict[str, ModelChoice]:
    return {c.id: c for c in choices}
