"""The NIfTI header, read by us before ITK reads the voxels.

ITK is lenient where we must not be: it replaces a zero pixdim with 1 mm, and it zero-fills the
voxels missing from a truncated .nii or .nii.gz. Both give a wrong segmentation with exit 0, so
the header's spacing and the file's length are checked here; an InputError names the file.
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from mednextv2.errors import InputError

_NIFTI1_BYTES, _NIFTI2_BYTES = 348, 540
_READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class NiftiHeader:
    dims: Tuple[int, ...]        # voxels along each used axis (dim[1..dim[0]])
    pixdim: Tuple[float, ...]    # spacing along the same axes
    bitpix: int                  # bits per voxel, all components together
    vox_offset: int              # where the voxel data starts

    @property
    def data_end(self) -> int:
        """The byte just past the last voxel the header promises."""
        return self.vox_offset + math.prod(self.dims) * self.bitpix // 8


def parse_header(raw: bytes) -> Optional[NiftiHeader]:
    """A NIfTI-1 or NIfTI-2 header from the file's first bytes; None when it is not one."""
    for endian in "<>":
        if len(raw) < 4:
            return None
        size = struct.unpack(endian + "i", raw[:4])[0]
        if size == _NIFTI1_BYTES and len(raw) >= _NIFTI1_BYTES:
            dim = struct.unpack(endian + "8h", raw[40:56])
            bitpix = struct.unpack(endian + "h", raw[72:74])[0]
            pixdim = struct.unpack(endian + "8f", raw[76:108])
            offset = struct.unpack(endian + "f", raw[108:112])[0]
        elif size == _NIFTI2_BYTES and len(raw) >= _NIFTI2_BYTES:
            bitpix = struct.unpack(endian + "h", raw[14:16])[0]
            dim = struct.unpack(endian + "8q", raw[16:80])
            pixdim = struct.unpack(endian + "8d", raw[104:168])
            offset = struct.unpack(endian + "q", raw[168:176])[0]
        else:
            continue
        ndim = dim[0]
        if not 1 <= ndim <= 7 or bitpix <= 0 or not math.isfinite(offset):
            return None  # not a header we understand; ITK gives its own error
        return NiftiHeader(tuple(int(d) for d in dim[1:ndim + 1]), tuple(float(p) for p in pixdim[1:ndim + 1]),
                           int(bitpix), max(int(offset), _NIFTI1_BYTES if size == _NIFTI1_BYTES else size))
    return None


def check_nifti_file(path: Path) -> None:
    """Refuse a .nii/.nii.gz whose header spacing is unusable or whose voxel data is cut short."""
    compressed = path.name.lower().endswith(".gz")
    try:
        if compressed:
            with gzip.open(path, "rb") as f:
                raw = f.read(_NIFTI2_BYTES)
        else:
            with open(path, "rb") as f:
                raw = f.read(_NIFTI2_BYTES)
    except (EOFError, OSError, zlib.error) as e:
        raise InputError(f"{path}: cannot read the image (unreadable or corrupt file): the NIfTI header cannot be "
                         f"read ({e})") from e
    header = parse_header(raw)
    if header is None:
        return
    spatial = header.pixdim[:3]
    if not all(math.isfinite(p) and p > 0 for p in spatial):
        raise InputError(f"{path}: the NIfTI header gives voxel spacing (pixdim) {spatial}; spacing must be positive "
                         "and finite (ITK would silently use 1 mm). Fix the header with the tool that wrote the file.")
    have = _gzip_length(path, header.data_end) if compressed else path.stat().st_size
    if have is None or have < header.data_end:
        got = "its compressed data stops short" if have is None else f"the file holds only {have} bytes"
        raise InputError(f"{path}: the file is truncated: its header promises {header.data_end} bytes of header and "
                         f"voxel data ({'x'.join(map(str, header.dims))} voxels of {header.bitpix} bits), but {got}. "
                         "Copy or export the file again.")


def _gzip_length(path: Path, expected: int) -> Optional[int]:
    """The decompressed length of a gzip file up to the end of its last whole member; None when
    not even the first member is whole (cut short or corrupt).

    Fast path: a complete file ends with the length modulo 2**32 (ISIZE); a truncated one ends
    in compressed data, which equals the expected value by chance with odds of 1 in 2**32. Only
    files failing that test (multi-member, trailing bytes, or truly truncated) are decompressed."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        if f.tell() >= 18:
            f.seek(-4, 2)
            if struct.unpack("<I", f.read(4))[0] == expected % (1 << 32):
                return expected
        f.seek(0)
        complete: Optional[int] = None  # the length up to the end of the last whole member
        total, stream, pending = 0, zlib.decompressobj(31), b""
        try:
            while True:
                block = pending or f.read(_READ_BLOCK)
                if not block:
                    break
                total += len(stream.decompress(block, _READ_BLOCK))
                while stream.unconsumed_tail:  # bounded memory: drain in steps
                    total += len(stream.decompress(stream.unconsumed_tail, _READ_BLOCK))
                pending = b""
                if stream.eof:  # a further member, trailing bytes, or the end of the file follows
                    complete, pending, stream = total, stream.unused_data, zlib.decompressobj(31)
        except zlib.error:
            pass  # zlib's gzread ignores trailing bytes after a whole member too
    return complete
