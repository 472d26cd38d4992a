"""The per-user model cache: where bundles live, how they get in and out, and the locks.

Layout under the home folder (`MEDNEXTV2_HOME`, else a per-user data folder):

    models/<id>/            one bundle folder per model (model.json + weights)
    models/<id>/.install.json   where it came from: catalog version, sha256, source, date
    downloads/<id>-*.part   partial downloads, kept for resume
    catalogs/               last good copy of each remote catalog (for offline use)
    locks/<name>.lock       OS file locks; released by the OS if a process dies
    tmp/                    staging folders, renamed into models/ when complete
    config.json             {"catalogs": ["https://...", "/path/catalog.json"]}

A model enters `models/` only by an atomic rename of a complete, verified staging folder, so a
crash or a second process never leaves a half-written model there.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

from mednextv2.atomic import recover_swaps, recover_swaps_in, replace_folder
from mednextv2.errors import InputError, ResourceError
from mednextv2.locks import FileLock
from mednextv2.schema import model_id_problem

log = logging.getLogger(__name__)

HOME_ENV = "MEDNEXTV2_HOME"
INSTALL_INFO = ".install.json"


def default_home() -> Path:
    """`MEDNEXTV2_HOME`, else the platform's per-user data folder (models are not disposable:
    imported ones cannot be downloaded again, so not the cache folder)."""
    override = os.environ.get(HOME_ENV, "").strip()
    if override:
        return Path(override).expanduser().resolve()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "MedNeXtV2"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "MedNeXtV2"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "mednextv2"


def check_model_id(model_id: str) -> str:
    """A model id is a folder name in the cache: never a path, never a reserved name (schema.py)."""
    problem = model_id_problem(model_id)
    if problem:
        raise InputError(problem)
    return model_id


@dataclass(frozen=True)
class InstalledModel:
    id: str
    path: Path
    info: dict  # the .install.json record; {} for a folder placed there by hand


@dataclass(frozen=True)
class ModelCache:
    home: Path

    @classmethod
    def open(cls, home: Optional[os.PathLike] = None) -> "ModelCache":
        return cls(Path(home).expanduser().resolve() if home else default_home())

    # -- folders ---------------------------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def downloads_dir(self) -> Path:
        return self.home / "downloads"

    @property
    def catalogs_dir(self) -> Path:
        return self.home / "catalogs"

    @property
    def config_path(self) -> Path:
        return self.home / "config.json"

    def model_dir(self, model_id: str) -> Path:
        path = self.models_dir / check_model_id(model_id)
        # Belt and braces: whatever the id, the result stays inside models/.
        if path.resolve().parent != self.models_dir.resolve():
            raise InputError(f"model id {model_id!r} would point outside the cache")
        return path

    def lock(self, name: str, timeout: float = 3600.0) -> FileLock:
        return FileLock(self.home / "locks" / f"{check_model_id(name)}.lock", timeout=timeout)

    @contextlib.contextmanager
    def staging(self, prefix: str) -> Iterator[Path]:
        """A fresh folder on the cache's file system (so the final rename is atomic), removed on exit."""
        tmp_root = self.home / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=tmp_root))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    # -- config ----------------------------------------------------------------------------
    def config(self) -> dict:
        if not self.config_path.exists():
            return {}
        try:
            data = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as e:
            raise InputError(f"cannot read the config file {self.config_path}: {e}") from e
        if not isinstance(data, dict) or not isinstance(data.get("catalogs", []), list):
            raise InputError(f"{self.config_path} must be a JSON object like {{\"catalogs\": [\"https://...\"]}}")
        return data

    # -- models ----------------------------------------------------------------------------
    def is_installed(self, model_id: str) -> bool:
        recover_swaps(self.model_dir(model_id), _complete_model)
        return (self.model_dir(model_id) / "model.json").is_file()

    def installed(self) -> List[InstalledModel]:
        if not self.models_dir.is_dir():
            return []
        recover_swaps_in(self.models_dir, _complete_model)
        found = []
        for path in sorted(self.models_dir.iterdir()):
            if path.is_dir() and (path / "model.json").is_file() and model_id_problem(path.name) is None:
                found.append(InstalledModel(path.name, path, self.install_info(path.name)))
        return found

    def install_info(self, model_id: str) -> dict:
        path = self.model_dir(model_id) / INSTALL_INFO
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return {}

    def install(self, staged: Path, model_id: str, info: dict) -> Path:
        """Move a complete bundle folder into models/<id>, replacing an older one atomically.

        The caller holds `self.lock(model_id)`."""
        if not (staged / "model.json").is_file():
            raise InputError(f"{staged} is not a model bundle (no model.json)")
        record = dict(info, id=model_id, installed=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        (staged / INSTALL_INFO).write_text(json.dumps(record, indent=2), encoding="utf-8")
        target = self.model_dir(model_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        recover_swaps(target, _complete_model)
        try:
            replace_folder(staged, target)
        except OSError as e:
            raise ResourceError(f"cannot move the model into {target}: {e}") from e
        log.info("installed model %s in %s", model_id, target)
        return target

    def remove(self, model_id: str) -> Path:
        target = self.model_dir(model_id)
        if not target.exists():
            raise InputError(f"model {model_id!r} is not installed in {self.models_dir}")
        with self.lock(model_id):
            # Rename first so a half-deleted folder never looks like a model.
            doomed = target.with_name(f".{model_id}.removing-{os.getpid()}-{time.monotonic_ns()}")
            os.replace(target, doomed)
            shutil.rmtree(doomed)
            for part in self.downloads_of(model_id):
                part.unlink()
        return target

    def downloads_of(self, model_id: str) -> List[Path]:
        """Partial or verified archives of this model in downloads/ (named <id>-<sha256[:16]>.zip[.part],
        and the .part's `.validator`, which version of the file it holds)."""
        pattern = re.compile(rf"^{re.escape(model_id)}-[0-9a-f]{{16}}\.zip(\.part(\.validator)?)?$")
        if not self.downloads_dir.is_dir():
            return []
        return [p for p in self.downloads_dir.iterdir() if pattern.match(p.name)]


def _complete_model(folder: Path) -> bool:
    """An installed model folder is whole: a bundle the engine wrote, plus its install record."""
    from mednextv2.bundle import is_complete_bundle

    return is_complete_bundle(folder, allowed=(INSTALL_INFO,))
