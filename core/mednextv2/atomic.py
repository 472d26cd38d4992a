"""Atomic writes and content hashes: the one home of "write to a temporary name, then rename".

A file is written under a hidden fresh name in its destination folder and renamed over the
target only when complete, so a failed, cancelled or killed run never leaves a file that looks
valid (nor a temporary). Fresh names are made with `secrets`, not `mkstemp`/`mkdtemp`, whose
private 0600/0700 modes would survive the rename: the result gets the user's usual permissions.
A folder cannot be replaced in one rename, so `replace_folder` moves the old one aside first and
puts it back if the swap fails; a journal beside it lets the next run finish or undo a swap that
a kill cut short (`recover_swaps`).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Union

from mednextv2.errors import ResourceError

log = logging.getLogger(__name__)

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
    """A fresh empty folder beside `path` that replaces `path` (a folder or nothing) on success.

    The folder is part of a swap journal from the start, so a run killed while writing it or
    while swapping leaves what `recover_swaps` needs to finish or undo the swap."""
    swap = _Swap.begin(Path(path))
    tmp = swap.incoming
    try:
        tmp.mkdir(mode=default_mode(0o777))
        yield tmp
        swap.commit()
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_if_no_space(e, Path(path))
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        swap.end()


def replace_folder(new: PathLike, target: PathLike) -> Path:
    """Rename folder `new` to `target` (same file system), replacing an existing `target` folder.

    The old folder is moved aside first and restored if the final rename fails; it is deleted
    only after the new one is in place. A kill part-way leaves a journal that `recover_swaps`
    reads on the next use of `target`."""
    new, target = Path(new), Path(target)
    swap = _Swap.begin(target)
    try:
        os.replace(new, swap.incoming)
        try:
            swap.commit()
        except BaseException:
            if swap.incoming.exists() and not new.exists():
                os.replace(swap.incoming, new)  # the caller cleans up its own folder
            raise
    finally:
        swap.end()
    return target


# ---------------------------------------------------------------- recoverable folder swaps
# A swap of folder NAME uses three siblings with one random token T: `.NAME.T.swap`, the journal,
# held under an OS lock while the swapping process lives; `.NAME.T.new`, the new folder; and
# `.NAME.T.old`, the previous folder while it is moved aside. The names come from the journal's
# own name, never from its content, so a journal can only ever point at its own siblings.
_SWAP_MARK = b'{"mednextv2": "folder swap", "version": 1}\n'
_SWAP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<token>[0-9a-f]{12})\.swap$")
_EARLIER_RE = re.compile(r"^\.(.+)\.[0-9a-f]{12}\.(old|tmp)$")  # an earlier version's swap, without a journal


class _Swap:
    def __init__(self, target: Path, token: str, fd: int) -> None:
        self.target, self.fd = target, fd
        self.journal = target.parent / f".{target.name}.{token}.swap"
        self.incoming = target.parent / f".{target.name}.{token}.new"
        self.old = target.parent / f".{target.name}.{token}.old"

    @classmethod
    def begin(cls, target: Path) -> "_Swap":
        from mednextv2.locks import _try_lock

        token = secrets.token_hex(6)
        journal = target.parent / f".{target.name}.{token}.swap"
        fd = os.open(journal, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        _try_lock(fd)  # a new file: nobody else holds it
        os.write(fd, _SWAP_MARK)
        os.fsync(fd)
        return cls(target, token, fd)

    def commit(self) -> None:
        """Move the old folder aside, the new one in, then delete the old one; the caller ends the
        swap (`end`) after it, or after cleaning up a failure."""
        moved = False
        if self.target.exists() or self.target.is_symlink():
            os.replace(self.target, self.old)
            moved = True
        try:
            os.replace(self.incoming, self.target)
        except BaseException:
            if moved and not self.target.exists():
                os.replace(self.old, self.target)
            raise
        _delete(self.old)

    def end(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # first: Windows cannot delete an open file
            self.fd = -1
        _remove(self.journal)


def recover_swaps(target: PathLike, complete: Callable[[Path], bool]) -> List[str]:
    """Finish or undo each swap of folder `target` that a killed run left half-done (a swap in
    progress in a live process is left alone): the new folder takes `target`'s place when
    `complete(new)`, otherwise the old one is put back. Returns one sentence per swap saying which."""
    target = Path(target)
    found = []
    try:
        names = os.listdir(target.parent)
    except OSError:
        return found
    journals = set()
    for name in sorted(names):
        match = _SWAP_RE.match(name)
        if match and match["name"] == target.name:
            journals.add(match["token"])
            said = _recover(_Swap(target, match["token"], -1), complete)
            if said:
                log.warning("%s", said)
                found.append(said)
    suffix = _suffix(target)
    stem = target.name[:-len(suffix)] if suffix else target.name
    earlier = re.compile(rf"^\.{re.escape(stem)}\.([0-9a-f]{{12}})\.(old|tmp){re.escape(suffix)}$")
    for name in sorted(names):
        match = earlier.match(name)
        if match and match[1] not in journals:  # no journal: its name is all there is to go by
            said = (f"{target.parent / name}: the {'previous' if match[2] == 'old' else 'unfinished new'} version "
                    f"of {target.name}, left by an interrupted run of an earlier mednextv2; not touched: check "
                    "it, then delete it or rename it back")
            log.warning("%s", said)
            found.append(said)
    return found


def recover_swaps_in(folder: PathLike, complete: Callable[[Path], bool]) -> List[str]:
    """`recover_swaps` for every folder in `folder` that has a swap journal or an earlier version's leftover."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    targets = sorted({m["name"] for m in map(_SWAP_RE.match, names) if m}
                     | {m[1] for m in map(_EARLIER_RE.match, names) if m})
    return [said for name in targets for said in recover_swaps(Path(folder) / name, complete)]


def _recover(swap: _Swap, complete: Callable[[Path], bool]) -> Optional[str]:
    from mednextv2.locks import _try_lock

    try:
        swap.fd = os.open(swap.journal, os.O_RDWR)
    except OSError:
        return None  # finished meanwhile
    try:
        if not _try_lock(swap.fd):
            return None  # its process is alive and still swapping
        if os.read(swap.fd, len(_SWAP_MARK) + 1) not in (_SWAP_MARK, b""):
            return None  # not a journal of ours: leave it and its siblings alone
        try:
            said = _finish_or_undo(swap.target, swap.incoming, swap.old, complete)
        except OSError as e:
            log.warning("%s: cannot finish or undo an interrupted replacement (%s); left as it is", swap.target, e)
            return None
        swap.end()
        return said
    finally:
        if swap.fd >= 0:
            os.close(swap.fd)


def _finish_or_undo(target: Path, new: Path, old: Path, complete: Callable[[Path], bool]) -> Optional[str]:
    if target.exists() or target.is_symlink():
        if old.exists() or old.is_symlink():  # killed after the new folder was moved in
            _delete(old)
            return f"{target}: an interrupted replacement had finished; deleted the previous version left in {old.name}"
        if new.exists():  # killed while the new folder was written, or before the old one was moved aside
            _delete(new)
            return (f"{target}: an interrupted replacement had not started; kept {target.name} and deleted the "
                    "unfinished new version")
        return None
    if new.is_dir() and complete(new):
        os.replace(new, target)
        _delete(old)
        return f"{target}: completed an interrupted replacement; {target.name} is the new version"
    if old.exists() or old.is_symlink():
        os.replace(old, target)
        _delete(new)
        return (f"{target}: undid an interrupted replacement; the new version was incomplete, the previous one "
                "is back")
    if new.exists():
        _delete(new)
        return f"{target}: deleted an incomplete new version left by an interrupted run"
    return None


def _delete(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


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
