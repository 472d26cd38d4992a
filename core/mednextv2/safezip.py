"""Reading untrusted zip files: the one place that checks a zip before anything is read from it.

`models import`, catalog downloads and `segment -m ZIP` all go through `checked_zip`: entry
count, declared size and compression ratio of the whole and of each entry (zip bombs), and entry
names (absolute paths, `..`, links) are checked first; then every read is bounded by the bytes
actually produced, so a zip whose headers lie cannot fill the memory or the disk. Entries are
streamed: only small ones (model.json) are ever read whole into memory. A corrupt zip (bad CRC, truncated data)
is an InputError naming the file, never a traceback.
"""
from __future__ import annotations

import contextlib
import re
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Dict, Iterator, Optional

from mednextv2.disk import format_size, require_free_space
from mednextv2.errors import InputError

MAX_ARCHIVE_BYTES = 50 * 1024 ** 3   # uncompressed; larger than any MedNeXt results folder
MAX_ARCHIVE_FILES = 10_000
MAX_COMPRESSION_RATIO = 200          # a zip bomb compresses far better than float weights
_CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)


class CheckedZip:
    """An open zip whose entries passed the checks; `entries` maps safe relative names to entries."""

    def __init__(self, zf: zipfile.ZipFile, archive: Path, max_bytes: int) -> None:
        self.zf, self.archive, self.max_bytes = zf, archive, max_bytes
        self.entries: Dict[str, zipfile.ZipInfo] = {}
        for member in zf.infolist():
            name = str(_safe_member_path(member, archive))
            if name in self.entries:
                raise InputError(f"{archive}: refusing a zip with two entries named {name!r}")
            self.entries[name] = member
        files = {n for n, m in self.entries.items() if not m.is_dir()}
        for name in self.entries:
            clash = next((str(p) for p in PurePosixPath(name).parents if str(p) in files), None)
            if clash:  # it could not be unpacked: `clash` would be a file and a folder at once
                raise InputError(f"{archive}: refusing a zip where {clash!r} is a file and also the folder of "
                                 f"{name!r}")

    def read(self, name: str, limit: Optional[int] = None) -> bytes:
        """The bytes of entry `name` (KeyError if absent), at most `limit` (default: the archive limit)."""
        return b"".join(self.stream(name, limit))

    def extract(self, name: str, target: Path, limit: Optional[int] = None) -> Path:
        """Stream entry `name` into the new file `target`."""
        with open(target, "wb") as out:
            for block in self.stream(name, limit):
                out.write(block)
        return target

    @contextlib.contextmanager
    def open(self, name: str, limit: Optional[int] = None) -> Iterator[IO[bytes]]:
        """Entry `name` as a file to read from (at most its checked declared size; KeyError if absent)."""
        member = self.entries[name]
        limit = self.max_bytes if limit is None else limit
        if member.file_size > limit:
            raise InputError(f"{self.archive}: entry {name} is {format_size(member.file_size)}, "
                             f"more than the {format_size(limit)} allowed")
        try:
            with self.zf.open(member) as src:
                yield src
        except _CORRUPT as e:
            raise InputError(f"{self.archive} is corrupt (entry {name}: {e}); download or copy it again") from e

    def stream(self, name: str, limit: Optional[int] = None) -> Iterator[bytes]:
        member = self.entries[name]
        limit = self.max_bytes if limit is None else limit
        if member.file_size > limit:
            raise InputError(f"{self.archive}: entry {name} is {format_size(member.file_size)}, "
                             f"more than the {format_size(limit)} allowed")
        done = 0
        try:
            with self.zf.open(member) as src:
                for block in iter(lambda: src.read(1 << 20), b""):
                    done += len(block)
                    if done > limit:
                        raise InputError(f"{self.archive}: entry {name} unpacks to more than the {format_size(limit)} allowed")
                    yield block
        except _CORRUPT as e:
            raise InputError(f"{self.archive} is corrupt (entry {name}: {e}); download or copy it again") from e


@contextlib.contextmanager
def checked_zip(archive: Path, *, max_bytes: int = MAX_ARCHIVE_BYTES,
                max_files: int = MAX_ARCHIVE_FILES) -> Iterator[CheckedZip]:
    """Open `archive` and check every entry before anything is read (see the module docstring)."""
    archive = Path(archive)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{archive} is not a valid zip file: {e}") from e
    with zf:
        members = zf.infolist()
        if len(members) > max_files:
            raise InputError(f"{archive} holds {len(members)} entries, more than the {max_files} allowed")
        declared = sum(m.file_size for m in members)
        if declared > max_bytes:
            raise InputError(f"{archive} would unpack to {format_size(declared)}, more than the {format_size(max_bytes)} allowed")
        packed = max(sum(m.compress_size for m in members), 1)
        if declared > 1 << 20 and declared / packed > MAX_COMPRESSION_RATIO:
            raise InputError(f"{archive} unpacks to {declared / packed:.0f}x its size: refusing a likely zip bomb")
        # Per entry too: one bomb entry hides behind incompressible neighbours in the overall ratio.
        for m in members:
            ratio = m.file_size / max(m.compress_size, 1)
            if m.file_size > 1 << 20 and ratio > MAX_COMPRESSION_RATIO:
                raise InputError(f"{archive}: entry {m.filename!r} unpacks to {ratio:.0f}x its size "
                                 f"({format_size(m.file_size)}): refusing a likely zip bomb")
        yield CheckedZip(zf, archive, max_bytes)


def safe_extract_zip(archive: Path, dest: Path, *, max_bytes: int = MAX_ARCHIVE_BYTES,
                     max_files: int = MAX_ARCHIVE_FILES) -> None:
    """Extract `archive` into `dest` after the checks; the total written is bounded too."""
    with checked_zip(archive, max_bytes=max_bytes, max_files=max_files) as checked:
        require_free_space(dest, sum(m.file_size for m in checked.entries.values()), f"unpacking {Path(archive).name}")
        dest.mkdir(parents=True, exist_ok=True)
        written = 0
        for name, member in checked.entries.items():
            target = dest.joinpath(*PurePosixPath(name).parts)
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            checked.extract(name, target, max_bytes - written)
            written += target.stat().st_size


def _safe_member_path(member: zipfile.ZipInfo, archive: Path) -> PurePosixPath:
    name = member.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or path.is_absolute():
        raise InputError(f"{archive}: refusing entry {member.filename!r} with an absolute path")
    if any(part == ".." for part in path.parts):
        raise InputError(f"{archive}: refusing entry {member.filename!r} that points outside the folder ('..')")
    if stat.S_ISLNK(member.external_attr >> 16):
        raise InputError(f"{archive}: refusing entry {member.filename!r}, a symbolic link")
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        raise InputError(f"{archive}: refusing entry {member.filename!r} with an empty path")
    return PurePosixPath(*parts)
