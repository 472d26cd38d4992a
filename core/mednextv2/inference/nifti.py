"""The NIfTI header, read by us before ITK reads the voxels.

ITK is lenient where we must not be: it replaces a zero pixdim with 1 mm, it zero-fills the
voxels missing from a truncated file, and it turns NaN and infinite float voxels into 0. Each
gives a wrong segmentation with exit 0, so the header's spacing, the data's length (decompressed,
never trusting the gzip size trailer) and the float voxels are checked here, for single files
(.nii, .nii.gz) and header/data pairs (.hdr + .img or .img.gz) alike; an InputError names the file.
The voxel data is streamed in blocks, never held whole.
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional, Tuple

import numpy as np

from mednextv2.errors import InputError

_NIFTI1_BYTES, _NIFTI2_BYTES = 348, 540
_READ_BLOCK = 1 << 20
_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes FLOAT32, FLOAT64
NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".hdr.gz", ".img", ".img.gz")


@dataclass(frozen=True)
class NiftiHeader:
    dims: Tuple[int, ...]        # voxels along each used axis (dim[1..dim[0]])
    pixdim: Tuple[float, ...]    # spacing along the same axes
    bitpix: int                  # bits per voxel, all components together
    vox_offset: int              # where the voxel data starts (in the .img file of a pair)
    datatype: int = 0            # NIfTI datatype code
    endian: str = "<"

    @property
    def data_end(self) -> int:
        """The byte just past the last voxel the header promises."""
        return self.vox_offset + math.prod(self.dims) * self.bitpix // 8

    @property
    def float_dtype(self) -> Optional[np.dtype]:
        code = _FLOAT_TYPES.get(self.datatype)
        return np.dtype(self.endian + code) if code and np.dtype(code).itemsize * 8 == self.bitpix else None


def is_nifti_path(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def parse_header(raw: bytes, pair: bool = False) -> Optional[NiftiHeader]:
    """A NIfTI-1 or NIfTI-2 header from the file's first bytes; None when it is not one. `pair`:
    the header of a .hdr/.img pair, whose voxel offset counts from the start of the .img file."""
    for endian in "<>":
        if len(raw) < 4:
            return None
        size = struct.unpack(endian + "i", raw[:4])[0]
        if size == _NIFTI1_BYTES and len(raw) >= _NIFTI1_BYTES:
            dim = struct.unpack(endian + "8h", raw[40:56])
            datatype = struct.unpack(endian + "h", raw[70:72])[0]
            bitpix = struct.unpack(endian + "h", raw[72:74])[0]
            pixdim = struct.unpack(endian + "8f", raw[76:108])
            offset = struct.unpack(endian + "f", raw[108:112])[0]
        elif size == _NIFTI2_BYTES and len(raw) >= _NIFTI2_BYTES:
            datatype = struct.unpack(endian + "h", raw[12:14])[0]
            bitpix = struct.unpack(endian + "h", raw[14:16])[0]
            dim = struct.unpack(endian + "8q", raw[16:80])
            pixdim = struct.unpack(endian + "8d", raw[104:168])
            offset = struct.unpack(endian + "q", raw[168:176])[0]
        else:
            continue
        ndim = dim[0]
        if not 1 <= ndim <= 7 or bitpix <= 0 or not math.isfinite(offset) or min(dim[1:ndim + 1]) < 0:
            return None  # not a header we understand; ITK gives its own error
        start = max(int(offset), 0) if pair else max(int(offset), size)
        return NiftiHeader(tuple(int(d) for d in dim[1:ndim + 1]), tuple(float(p) for p in pixdim[1:ndim + 1]),
                           int(bitpix), start, int(datatype), endian)
    return None


def _pair_files(path: Path) -> Tuple[Path, Optional[Path]]:
    """(header file, data file) of a .hdr/.img pair named by either file; the data file may be gzipped."""
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    stem = name[:-4]

    def first(*suffixes: str) -> Optional[Path]:
        found = [path.with_name(stem + s) for s in suffixes]
        return next((p for p in found if p.exists()), None)

    header = first(".hdr", ".HDR", ".hdr.gz", ".HDR.gz") or path.with_name(stem + ".hdr")
    return header, first(".img", ".IMG", ".img.gz", ".IMG.gz")


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def check_nifti_file(path: Path) -> None:
    """Refuse a NIfTI image whose header spacing is unusable, whose voxel data is cut short, or
    whose float voxels are NaN or infinite."""
    lower = path.name.lower()
    pair = not lower.endswith((".nii", ".nii.gz"))
    header_file, data_file = _pair_files(path) if pair else (path, path)
    try:
        with _open(header_file) as f:
            raw = f.read(_NIFTI2_BYTES)
    except (EOFError, OSError, zlib.error) as e:
        raise InputError(f"{path}: cannot read the image (unreadable or corrupt file): the NIfTI header "
                         f"{header_file.name} cannot be read ({e})") from e
    header = parse_header(raw, pair)
    if header is None:
        return
    spatial = header.pixdim[:3]
    if not all(math.isfinite(p) and p > 0 for p in spatial):
        raise InputError(f"{path}: the NIfTI header gives voxel spacing (pixdim) {spatial}; spacing must be positive "
                         "and finite (ITK would silently use 1 mm). Fix the header with the tool that wrote the file.")
    if data_file is None:
        raise InputError(f"{path}: the voxel data file of this header ({header_file.stem}.img) does not exist; "
                         "copy it beside the header")
    scan = _VoxelScan(header)
    try:
        have = _scan_gzip(data_file, scan) if data_file.name.lower().endswith(".gz") else _scan_plain(data_file, scan)
    except OSError as e:
        raise InputError(f"{path}: cannot read the image (unreadable or corrupt file): {e}") from e
    if have is None or have < header.data_end:
        got = "its compressed data stops short" if have is None else f"the file holds only {have} bytes"
        raise InputError(f"{path}: the file is truncated: its header promises {header.data_end} bytes of header and "
                         f"voxel data ({'x'.join(map(str, header.dims))} voxels of {header.bitpix} bits), but {got}. "
                         "Copy or export the file again.")
    if scan.non_finite:
        raise InputError(f"{path}: the image has {scan.non_finite} NaN or infinite voxel(s) (ITK would silently read "
                         "them as 0); replace them (e.g. with the background value) before using the image")


class _VoxelScan:
    """Counts the NaN/infinite float voxels in the bytes fed to it (the whole file, in order)."""

    def __init__(self, header: NiftiHeader) -> None:
        self.dtype = header.float_dtype
        self.start, self.end = header.vox_offset, header.data_end
        self.position = 0
        self.carry = b""
        self.non_finite = 0

    def feed(self, chunk: bytes) -> None:
        begin, self.position = self.position, self.position + len(chunk)
        if self.dtype is None or self.position <= self.start or begin >= self.end:
            return
        data = self.carry + chunk[max(self.start - begin, 0): self.end - begin]
        usable = len(data) - len(data) % self.dtype.itemsize
        self.carry = data[usable:]
        values = np.frombuffer(data, self.dtype, usable // self.dtype.itemsize)
        self.non_finite += int(values.size - np.count_nonzero(np.isfinite(values)))


def _scan_plain(path: Path, scan: _VoxelScan) -> int:
    with open(path, "rb") as f:
        if scan.dtype is None:
            return f.seek(0, 2)
        for block in iter(lambda: f.read(_READ_BLOCK), b""):
            scan.feed(block)
    return scan.position


def _scan_gzip(path: Path, scan: _VoxelScan) -> Optional[int]:
    """The decompressed length of a gzip file up to the end of its last whole member; None when
    not even the first member is whole (cut short or corrupt). Every byte is decompressed: the
    size trailer (ISIZE) is only the length modulo 2**32, and a forged one hides a truncation."""
    complete: Optional[int] = None  # the length up to the end of the last whole member
    with open(path, "rb") as f:
        stream, pending = zlib.decompressobj(31), b""
        try:
            while True:
                block = pending or f.read(_READ_BLOCK)
                if not block:
                    break
                scan.feed(stream.decompress(block, _READ_BLOCK))
                while stream.unconsumed_tail:  # bounded memory: drain in steps
                    scan.feed(stream.decompress(stream.unconsumed_tail, _READ_BLOCK))
                pending = b""
                if stream.eof:  # a further member, trailing bytes, or the end of the file follows
                    complete, pending, stream = scan.position, stream.unused_data, zlib.decompressobj(31)
        except zlib.error:
            pass  # zlib's gzread ignores trailing bytes after a whole member too
    return complete
