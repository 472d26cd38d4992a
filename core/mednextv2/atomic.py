"""Atomic writes and content hashes: the one home of "write to a temporary name, then rename".

A file is written under a hidden fresh name in its destination folder and renamed over the
target only when complete, so a failed, cancelled or killed run never leaves a file that looks
valid (nor a temporary). Fresh names are made with `secrets`, not `mkstemp`/`mkdtemp`, whose
private 0600/0700 modes would survive the rename: the result gets the user's usual permissions.
A folder cannot be replaced in one rename, so `replace_folder` moves the old one aside first and
puts it back if the swap fails.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from mednextv2.errors import ResourceError

PathLike = Union[str, "os.PathLike[str]"]
# Multi-part extensions that must stay at the end of a temporary name (readers pick the format by it).
_KNOWN_SUFFIXES = (".seg.nrrd", ".nii.gz")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in _KNOWN_SUFFIXES:
        if name.endswith(s):
            return path.name[-len(s):]
    return path.suffix


def temporary_sibling(path: PathLike, tag: str = "tmp") -> Path:
    """A fresh hidden name beside `path`, keeping its extension: `.<stem>.<random>.<tag><ext>`."""
    path = Path(path)
    suffix = _suffix(path)
    stem = path.name[:-len(suffix)] if suffix else path.name
    return path.parent / f".{stem}.{secrets.token_hex(6)}.{tag}{suffix}"


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temporary path beside `path` (same extension) that replaces it only on success."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        _raise_if_no_space(e, path)
        raise
    except BaseException:
        _remove(tmp)
        raise


def _raise_if_no_space(error: OSError, path: Path) -> None:
    """A full disk or quota is ResourceError (exit 3), not an OSError traceback."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        raise ResourceError(f"no space left to write {path}") from error


def write_bytes(path: PathLike, data: bytes, *, fsync: bool = False) -> Path:
    """Write `data` to `path` atomically; `fsync` also forces it to disk before the rename."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    return path


def copy_file(source: PathLike, path: PathLike) -> Path:
    """Copy `source` to `path` atomically."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
    return Path(path)


def default_mode(base: int) -> int:
    """`base` less the process umask: what a plain open()/mkdir() would give."""
    mask = os.umask(0o022)
    os.umask(mask)
    return base & ~mask


@contextlib.contextmanager
def atomic_folder(path: PathLike) -> Iterator[Path]:
    """A fresh empty folder beside `path` that replaces `path` (a folder or nothing) on success."""
    path = Path(path)
    tmp = temporary_sibling(path)
    tmp.mkdir(mode=default_mode(0o777))
    try:
        yield tmp
        replace_folder(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_if_no_space(e, path)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_folder(new: PathLike, target: PathLike) -> Path:
    """Rename folder `new` to `target` (same file system), replacing an existing `target` folder.

    The old folder is moved aside first and restored if the final rename fails; it is deleted
    only after the new one is in place."""
    new, target = Path(new), Path(target)
    old = None
    if target.exists() or target.is_symlink():
        old = temporary_sibling(target, "old")
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None and not target.exists():
            os.replace(old, target)
        raise
    if old is not None and old.is_symlink():
        old.unlink()
    elif old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def sha256_file(path: PathLike, progress: Optional[Callable[..., None]] = None, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks; `progress("verify", fraction, text)` if given."""
    path = Path(path)
    digest = hashlib.sha256()
    total = max(path.stat().st_size, 1)
    done = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
            done += len(block)
            if progress:
                progress("verify", done / total, "checking SHA-256")
    return digest.hexdigest()


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
