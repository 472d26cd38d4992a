"""A training job folder and its small state file, so a run can be resumed after Slicer restarts.

    <jobs root>/<job>/train-state.json   what the wizard needs to show and resume the job
    <jobs root>/<job>/dataset/           the exported cases (unless they came from a folder)
    <jobs root>/<job>/<job>/             `mednextv2 train -o`: the bundle, id <job>
    <jobs root>/<job>/<job>.training/    the engine's checkpoints, cache and metrics (`--resume`)

The engine owns the bundle and its `.training` folder; this file only remembers the settings
and the last known progress. It is rewritten atomically, so a crash keeps the old copy.
"""
from __future__ import annotations

import datetime
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import List, Optional, Tuple

from mednextv2.atomic import write_bytes  # torch-free: safe at Slicer start

from MedNeXtV2TrainLib.settings import TrainSettings

logger = logging.getLogger(__name__)
STATE_FILE = "train-state.json"
FORMAT_VERSION = 1
# Jobs that stopped before the end; "running" after a restart means Slicer exited mid-run.
RESUMABLE = ("running", "cancelled", "failed")
STATUSES = ("ready", "running", "cancelled", "failed", "finished", "registered")


class ResumeStateError(ValueError):
    """The state file is missing, unreadable, or from another version; the message names the file."""


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class TrainState:
    dataset: str
    output_bundle: str
    settings: TrainSettings
    status: str = "ready"  # dataset in place, not started
    epochs_done: Optional[int] = None  # completed epochs last reported by the engine
    best_dice: Optional[float] = None
    registered_model_id: Optional[str] = None
    message: str = ""
    started: str = field(default_factory=now_iso)
    updated: str = field(default_factory=now_iso)

    def with_progress(self, **changes) -> "TrainState":
        if "status" in changes and changes["status"] not in STATUSES:
            raise ValueError(f"unknown training status {changes['status']!r}")
        return replace(self, updated=now_iso(), **changes)

    @property
    def resumable(self) -> bool:
        return self.status in RESUMABLE

    def to_dict(self) -> dict:
        data = asdict(self)
        data["settings"] = self.settings.to_dict()
        data["format_version"] = FORMAT_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict, where: str = STATE_FILE) -> "TrainState":
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            raise ResumeStateError(f"{where}: not a version-{FORMAT_VERSION} training state")
        values = {k: v for k, v in data.items() if k != "format_version"}
        try:
            values["settings"] = TrainSettings.from_dict(values["settings"])
            state = cls(**values)
        except (KeyError, TypeError, ValueError) as e:
            raise ResumeStateError(f"{where}: broken training state ({e})") from e
        if state.status not in STATUSES:
            raise ResumeStateError(f"{where}: unknown status {state.status!r}")
        return state


def save_state(job_dir: Path, state: TrainState) -> Path:
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    target = job_dir / STATE_FILE
    write_bytes(target, json.dumps(state.to_dict(), indent=2).encode("utf-8"))
    return target


def load_state(job_dir: Path) -> TrainState:
    path = Path(job_dir) / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResumeStateError(f"cannot read {path}: {e}") from e
    return TrainState.from_dict(data, str(path))


def find_jobs(root: Path) -> List[Tuple[Path, TrainState]]:
    """Every readable job under root, newest first; unreadable ones are logged and skipped."""
    jobs = []
    root = Path(root)
    if not root.is_dir():
        return jobs
    for state_file in root.glob(f"*/{STATE_FILE}"):
        try:
            jobs.append((state_file.parent, load_state(state_file.parent)))
        except ResumeStateError as e:
            logger.warning("skipping training job: %s", e)
    return sorted(jobs, key=lambda job: job[1].updated, reverse=True)


def find_resumable(root: Path) -> List[Tuple[Path, TrainState]]:
    return [(path, state) for path, state in find_jobs(root) if state.resumable]


def new_job_dir(root: Path, model_id: str) -> Path:
    """A new, empty job folder, created here: <root>/<model id>, then -2, -3, ...

    Created (not just named) so that a failed export may remove it: it cannot be anyone else's."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    candidate, n = root / model_id, 2
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            candidate, n = root / f"{model_id}-{n}", n + 1
