"""The model catalog: the shipped one merged with user catalogs, and `resolve_model`.

Sources, merged in this order (a later entry with the same id replaces an earlier one):
1. `catalog.json` shipped in the package;
2. `MEDNEXTV2_CATALOGS`: comma-separated local paths or https URLs;
3. `"catalogs"` in `<home>/config.json`;
4. catalogs given on the command line (`mednextv2 models --catalog ...`).
A remote catalog's last good copy is kept in `<home>/catalogs/` and used when offline.

A catalog carries the SHA-256 that protects its models, so it must come from disk or over https;
plain http only with MEDNEXTV2_ALLOW_HTTP=1, and a warning each time. Model URLs may be plain http:
the hash from a trusted catalog verifies their bytes.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

from mednextv2.atomic import write_bytes
from mednextv2.disk import format_size
from mednextv2.errors import Cancelled, InputError, MedNeXtError, ResourceError
from mednextv2.output_guard import resolved
from mednextv2.schema import load_schema, loads_strict, model_id_problem, schema_errors
from mednextv2.store.cache import ModelCache, check_model_id

log = logging.getLogger(__name__)

CATALOGS_ENV = "MEDNEXTV2_CATALOGS"
ALLOW_HTTP_ENV = "MEDNEXTV2_ALLOW_HTTP"
SHIPPED = "(shipped catalog)"
MAX_CATALOG_BYTES = 5 * 1024 * 1024


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    title: str
    description: str
    version: str
    modality: str
    labels: Tuple[Mapping, ...]
    urls: Tuple[str, ...]
    sha256: str
    size: int
    license: str
    citation: str
    archive: str = "bundle"  # "bundle" | "nnunet"
    nnunet: Mapping = field(default_factory=dict)
    homepage: Optional[str] = None
    min_gpu_memory_gb: Optional[float] = None
    timings: Mapping = field(default_factory=dict)
    source: str = SHIPPED  # the catalog it came from

    @classmethod
    def from_dict(cls, data: Mapping, source: str) -> "CatalogEntry":
        values = dict(data)
        values["labels"] = tuple(values["labels"])
        values["urls"] = tuple(values["urls"])
        return cls(source=source, **values)

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "source"}
        out["labels"], out["urls"] = list(self.labels), list(self.urls)
        return out


@dataclass(frozen=True)
class Catalog:
    entries: Mapping[str, CatalogEntry]
    sources: Tuple[str, ...]
    problems: Tuple[str, ...] = ()  # sources that could not be read, with the reason

    def __contains__(self, model_id: str) -> bool:
        return model_id in self.entries

    def __iter__(self):
        return iter(self.entries.values())

    def get(self, model_id: str) -> CatalogEntry:
        if model_id not in self.entries:
            known = ", ".join(sorted(self.entries)) or "none"
            extra = "".join(f"\n  (could not read {p})" for p in self.problems)
            raise InputError(f"unknown model id {model_id!r}; catalog models: {known}{extra}")
        return self.entries[model_id]


def parse_catalog(text: Union[str, bytes], where: str) -> List[CatalogEntry]:
    """Entries of one catalog document, after checking it against the schema."""
    data = loads_strict(text, f"catalog {where}")
    errors = schema_errors(data, load_schema("catalog.schema.json"))
    errors = errors or [f"models[{i}].id: {p}" for i, p in enumerate(model_id_problem(e["id"]) for e in data["models"]) if p]
    if errors:
        raise InputError(f"catalog {where} does not match catalog.schema.json:\n  " + "\n  ".join(errors[:10]))
    entries = [CatalogEntry.from_dict(e, where) for e in data["models"]]
    ids = [e.id for e in entries]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputError(f"catalog {where} lists model id(s) {duplicates} more than once")
    for entry in entries:
        values = sorted(int(label["value"]) for label in entry.labels)
        if len(set(values)) != len(values):
            raise InputError(f"catalog {where}: model {entry.id!r} repeats a label value: {values}")
    return entries


def catalog_sources(cache: ModelCache, extra: Sequence[str] = ()) -> List[str]:
    """User catalog sources in merge order: environment, config file, then `extra` (the CLI)."""
    from_env = [s.strip() for s in os.environ.get(CATALOGS_ENV, "").split(",") if s.strip()]
    from_config = [str(s) for s in cache.config().get("catalogs", [])]
    return from_env + from_config + [str(s) for s in extra]


def load_catalog(cache: Optional[ModelCache] = None, extra: Sequence[str] = (), *, settings=None) -> Catalog:
    """The merged catalog. An unreadable user catalog is reported in `problems`, not fatal, so
    one dead URL never hides the other models."""
    cache = cache or ModelCache.open()
    shipped = resources.files("mednextv2").joinpath("catalog.json").read_text(encoding="utf-8")
    entries: Dict[str, CatalogEntry] = {e.id: e for e in parse_catalog(shipped, SHIPPED)}
    sources, problems = [SHIPPED], []
    for source in catalog_sources(cache, extra):
        try:
            found = parse_catalog(_read_source(source, cache, settings), source)
        except MedNeXtError as e:
            log.warning("skipping catalog %s: %s", source, e)
            problems.append(f"{source}: {e}")
            continue
        for entry in found:
            if entry.id in entries:
                log.info("catalog %s replaces model %s from %s", source, entry.id, entries[entry.id].source)
            entries[entry.id] = entry
        sources.append(source)
    return Catalog(entries, tuple(sources), tuple(problems))


def _read_source(source: str, cache: ModelCache, settings) -> bytes:
    scheme = urlsplit(source).scheme.lower()
    if scheme == "http":
        _check_plain_http(source)
    if scheme in ("http", "https"):
        return _read_remote(source, cache, settings, https_only=scheme == "https")
    if len(scheme) > 1:  # not a Windows drive letter
        raise InputError(f"catalog {source!r}: only local files and https URLs are accepted")
    path = Path(source).expanduser()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read catalog file {path}: {e.strerror or e}") from e
    if len(data) > MAX_CATALOG_BYTES:
        raise InputError(f"catalog file {path} is larger than {format_size(MAX_CATALOG_BYTES)}")
    return data


def _plain_http_allowed() -> bool:
    return os.environ.get(ALLOW_HTTP_ENV, "").strip() == "1"


def _check_plain_http(url: str) -> None:
    """Refuse a plain-http catalog unless the user opted in, and warn each time they did."""
    if not _plain_http_allowed():
        raise InputError(f"catalog {url} is plain http, which is refused: anyone on the network path could change "
                         "the checksums it lists and so choose the model files you install. Use an https:// URL or "
                         f"a local copy of the file, or set {ALLOW_HTTP_ENV}=1 to accept that risk.")
    log.warning("catalog %s is read over plain http (%s=1): anyone on the network path can change the models it "
                "lists", url, ALLOW_HTTP_ENV)


def _read_remote(url: str, cache: ModelCache, settings, *, https_only: bool) -> bytes:
    from mednextv2.store.download import DownloadSettings, fetch_bytes

    copy = cache.catalogs_dir / (hashlib.sha256(url.encode("utf-8")).hexdigest()[:24] + ".json")
    try:
        # Short timeouts: listing models must not hang for long when offline; the saved copy serves then.
        data = fetch_bytes(url, MAX_CATALOG_BYTES, https_only=https_only, settings=settings or DownloadSettings(
            connect_timeout=5.0, read_timeout=15.0, retries=1, backoff=0.5))
    except MedNeXtError as e:
        if copy.is_file():
            log.warning("catalog %s unreachable (%s); using the copy saved in %s", url, e, copy)
            return copy.read_bytes()
        raise
    parse_catalog(data, url)  # only a valid catalog replaces the saved copy
    copy.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(copy, data)
    return data


def download_model(entry: CatalogEntry, cache: Optional[ModelCache] = None, *, progress=None,
                   settings=None, force: bool = False, replace: bool = False) -> Path:
    """Download, verify and install one catalog model; a no-op when that version is installed.
    A model with the same id that did not come from a catalog (imported, or placed by hand) is
    replaced only with `replace`: it may exist nowhere else.

    Holds the model's lock throughout, so a second process waits and then finds it installed."""
    from mednextv2.store.download import DownloadSettings, download_verified
    from mednextv2.store.importer import ImportOptions, install_archive

    cache = cache or ModelCache.open()
    check_model_id(entry.id)
    if urlsplit(entry.source).scheme.lower() == "http":
        _check_plain_http(entry.source)  # the opt-in may have been withdrawn since the catalog was read
    with cache.lock(entry.id):
        if not force and cache.is_installed(entry.id) and cache.install_info(entry.id).get("sha256") == entry.sha256:
            log.info("model %s %s is already installed", entry.id, entry.version)
            return cache.model_dir(entry.id)
        _refuse_replacing_own_model(cache, entry.id, replace)
        part = cache.downloads_dir / f"{entry.id}-{entry.sha256[:16]}.zip.part"
        # Room for the download and for unpacking it (the unpacked files, then the bundle built from them).
        archive = download_verified(entry.urls, part, entry.sha256, entry.size, progress=progress,
                                    settings=settings or DownloadSettings(), then_needs=2 * entry.size)
        info = {"source": "catalog", "catalog": entry.source, "version": entry.version,
                "sha256": entry.sha256, "size": entry.size, "origin": entry.urls[0]}
        try:
            installed = install_archive(archive, cache, entry.id, kind=entry.archive, options=ImportOptions(**entry.nnunet),
                                        info=info, progress=progress)
        except (ResourceError, Cancelled, KeyboardInterrupt):
            log.warning("the verified download %s is kept: the next attempt installs it without downloading", archive)
            raise
        except BaseException:
            archive.unlink(missing_ok=True)
            raise
        archive.unlink(missing_ok=True)
        return installed


def _refuse_replacing_own_model(cache: ModelCache, model_id: str, replace: bool) -> None:
    if replace or not cache.is_installed(model_id):
        return
    info = cache.install_info(model_id)
    if info.get("source") == "catalog":
        return  # another version of the same catalog model: an update
    how = f"imported from {info.get('origin')}" if info.get("source") == "import" else "placed there by hand"
    raise InputError(f"a model with id {model_id!r} is already installed in {cache.model_dir(model_id)} ({how}), "
                     "not downloaded from a catalog; downloading would replace it. Remove it first "
                     f"(mednextv2 models remove {model_id}), or replace it with --replace")


def resolve_model(model_ref: Union[str, os.PathLike], *, cache: Optional[ModelCache] = None,
                  catalogs: Sequence[str] = (), download: bool = True, progress=None) -> Path:
    """The bundle (folder or .zip) that `-m/--model` names: a path, an installed id, or a catalog
    id (downloaded first when `download`). Anything else is an InputError saying what exists."""
    ref = os.fspath(model_ref)
    path = Path(ref).expanduser()
    resolved(path, "model")  # a symbolic link loop is not "not found"
    if not path.exists() and path.suffix.lower() != ".zip" and (os.sep in ref or "/" in ref):
        from mednextv2.atomic import recover_swaps
        from mednextv2.bundle import is_complete_bundle

        recover_swaps(path, is_complete_bundle)  # a bundle folder whose swap a killed `train` left half-done
    if path.exists():
        if path.is_dir() and not (path / "model.json").is_file():
            raise InputError(f"{path} is a folder without model.json. An nnU-Net results folder must be imported "
                             f"first: mednextv2 models import {path}")
        return path.resolve()
    if os.sep in ref or "/" in ref or path.suffix.lower() in (".zip", ".json"):
        raise InputError(f"model {ref!r} not found: no such file or folder")
    cache = cache or ModelCache.open()
    try:
        check_model_id(ref)
    except InputError as e:
        raise InputError(f"model {ref!r} is neither an existing bundle path nor a valid model id") from e
    if cache.is_installed(ref):
        return cache.model_dir(ref)
    catalog = load_catalog(cache, catalogs)
    if ref in catalog:
        if not download:
            raise InputError(f"model {ref!r} is not downloaded yet: run `mednextv2 models download {ref}`")
        return download_model(catalog.get(ref), cache, progress=progress)
    installed = ", ".join(m.id for m in cache.installed()) or "none"
    raise InputError(f"unknown model {ref!r}: not a bundle path, not installed in {cache.models_dir} "
                     f"(installed: {installed}) and not in the catalog. See `mednextv2 models list`.")



def entries_with_status(catalog: Catalog, cache: ModelCache) -> List[dict]:
    """One row per catalog or installed model: what `models list` and the Slicer panel show."""
    installed = {m.id: m for m in cache.installed()}
    rows = []
    for entry in sorted(catalog, key=lambda e: e.id):
        local = installed.pop(entry.id, None)
        state = "no"
        if local is not None:
            state = "yes" if local.info.get("sha256") == entry.sha256 else "other version"
        rows.append({"id": entry.id, "title": entry.title, "version": entry.version, "size": entry.size,
                     "installed": state, "path": str(local.path) if local else None, "source": entry.source})
    for local in installed.values():
        rows.append({"id": local.id, "title": _bundle_title(local.path), "version": local.info.get("version", ""),
                     "size": _folder_size(local.path), "installed": local.info.get("source", "local"),
                     "path": str(local.path), "source": local.info.get("origin", "local")})
    return rows


def _bundle_title(path: Path) -> str:
    try:
        return str(loads_strict((path / "model.json").read_bytes(), str(path)).get("title", path.name))
    except (OSError, ValueError, AttributeError):
        return path.name


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
