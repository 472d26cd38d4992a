"""Read input images with their full geometry, and refuse the ones that cannot be segmented.

Formats: anything SimpleITK reads from a file (NIfTI, NRRD, MHA/MHD, ...) and DICOM series
folders. Every check raises InputError naming the file and the problem, before any work is done.
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
import SimpleITK as sitk

from mednextv2.errors import InputError
from mednextv2.inference.nifti import check_nifti_file, is_nifti_path
from mednextv2.output_guard import resolved

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Direction matrices written by scanners and converters carry float noise; anything nearer to
# singular than this is a broken header, not an oblique acquisition.
_MIN_ABS_DETERMINANT = 1e-3
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def is_image_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and any(name.endswith(s) for s in IMAGE_SUFFIXES)


def _read_dicom_folder(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    try:
        series = reader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as e:
        raise InputError(f"{folder}: cannot scan the folder for DICOM series ({e})") from e
    if not series:
        raise InputError(f"{folder}: folder holds no DICOM series (to segment a folder of image files, "
                         "give an output folder)")
    # Several series: take the one with the most slices, the usual case of a scout plus a volume.
    files = max((reader.GetGDCMSeriesFileNames(str(folder), s) for s in series), key=len)
    if len(series) > 1:
        log.warning("%s holds %d DICOM series; using the largest (%d files)", folder, len(series), len(files))
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()  # the slice positions, read with the slices
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise InputError(f"{folder}: cannot read the DICOM series ({_first_line(e)})") from e
    _check_slice_positions(reader, image, files, folder)
    return image


def _check_slice_positions(reader: sitk.ImageSeriesReader, image: sitk.Image, files: Sequence[str],
                           folder: Path) -> None:
    """ITK stacks the slices on a uniform grid whatever their positions (it only prints a C++
    warning), so a missing or duplicate slice would shift every slice after it."""
    key = "0020|0032"  # Image Position (Patient)
    if len(files) < 3 or not all(reader.HasMetaDataKey(i, key) for i in range(len(files))):
        return
    try:
        positions = np.array([[float(v) for v in reader.GetMetaData(i, key).split("\\")] for i in range(len(files))])
    except ValueError:
        return  # unparsable tags: ITK used its defaults, nothing to compare
    normal = np.array(image.GetDirection(), dtype=float).reshape(3, 3)[:, 2]
    gaps = np.diff(positions @ normal)
    typical = float(np.median(np.abs(gaps)))
    # 0.01 mm or 1 %: scanners round positions to a few decimals; a missing slice doubles a gap.
    bad = np.flatnonzero(np.abs(np.abs(gaps) - typical) > max(0.01, 0.01 * typical))
    if typical < 1e-3 or bad.size:
        i = int(bad[0]) if bad.size else 0
        raise InputError(
            f"{folder}: the DICOM slices are not evenly spaced: most are {typical:.4g} mm apart, but "
            f"{max(bad.size, 1)} gap(s) differ, e.g. {abs(gaps[i]):.4g} mm between {Path(files[i]).name} and "
            f"{Path(files[i + 1]).name}. A slice is probably missing (or duplicated); reading it as a uniform grid "
            "would misplace every slice after it. Export the complete series, or resample it to a uniform grid "
            "first (for example in 3D Slicer).")


# ITK's reader refuses some broken headers itself; say what is wrong in the user's words.
_ITK_REASONS = (
    ("determinant is 0", "the direction matrix is singular"),
    ("spacing", "the voxel spacing is zero, negative or NaN"),
    ("space directions", "the space directions (spacing/direction) in the header are invalid or NaN"),
    ("space vector", "the space directions (spacing/direction) in the header are invalid or NaN"),
    ("File cannot be read", "the voxel data cannot be read: the file is truncated, or its data file is missing"),
    ("fread got only", "the file is truncated: it holds fewer voxel bytes than its header says"),
    ("_nrrdEncodingGzip_read: expected", "the file is truncated: it holds fewer voxel bytes than its header says"),
)


def _first_line(e: Exception) -> str:
    text = str(e)
    for needle, reason in _ITK_REASONS:
        if needle in text:
            return reason
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "Exception thrown in" not in ln]
    errors = [ln.split("ERROR:", 1)[1].strip() for ln in lines if "ERROR:" in ln]
    return (errors or lines or [type(e).__name__])[-1][:300]


def read_image(path: PathLike, allow_constant: bool = False) -> sitk.Image:
    """A validated 3D scalar image with its origin, spacing and direction (a label map may be
    constant: background only)."""
    path = Path(path)
    check_input_path(path)
    if path.is_dir():
        image = _read_dicom_folder(path)
    else:
        if path.name.lower().endswith((".nhdr", ".mhd")):
            _check_data_files(path)
        if is_nifti_path(path):
            check_nifti_file(path)  # spacing, length and NaN voxels, which ITK does not check
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as e:
            raise InputError(f"{path}: cannot read the image (unreadable or corrupt file): {_first_line(e)}") from e
    image = _drop_trailing_unit_dimension(image)
    validate_image(image, str(path), allow_constant)
    return image


def check_input_path(path: PathLike) -> Path:
    """An image file or DICOM folder that exists; never a FIFO, socket or device (reading one
    blocks forever or never ends)."""
    path = Path(path)
    if not path.exists():
        resolved(path, "input image")  # exists() is False for a symbolic link loop too: name the loop
        raise InputError(f"input image {path} does not exist")
    if not (path.is_file() or path.is_dir()):
        raise InputError(f"input image {path} is not a regular file (a pipe, socket or device); give an image "
                         f"file ({', '.join(IMAGE_SUFFIXES)}) or a DICOM folder")
    return path


# A detached header names its voxel file: NRRD `data file: NAME` (or `datafile:`), MetaImage
# `ElementDataFile = NAME`. LIST, LOCAL and printf-style patterns name no single file.
_DATA_FILE_FIELDS = (("data file:", ".nhdr"), ("datafile:", ".nhdr"), ("elementdatafile", ".mhd"))


def _check_data_files(header: Path) -> None:
    """ITK says only "File cannot be read" when a .nhdr/.mhd's data file is missing: name it."""
    try:
        with open(header, "rb") as f:
            text = f.read(1 << 16).decode("latin-1")
    except OSError as e:
        raise InputError(f"{header}: cannot read the header ({e.strerror})") from e
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped and header.suffix.lower() == ".nhdr":
            return  # the end of a NRRD header
        lowered = stripped.lower()
        for field, suffix in _DATA_FILE_FIELDS:
            if header.suffix.lower() != suffix or not lowered.startswith(field):
                continue
            value = stripped[len(field):].lstrip(" =:").strip()
            if not value or value.upper() in ("LIST", "LOCAL") or "%" in value or " " in value:
                return
            data = Path(value) if Path(value).is_absolute() else header.parent / value
            if not data.is_file():
                raise InputError(f"{header}: its data file {data} (named in the header as {value!r}) "
                                 f"{'is not a regular file' if data.exists() else 'does not exist'}; keep the "
                                 "header and its data file together")
            return


def _drop_trailing_unit_dimension(image: sitk.Image) -> sitk.Image:
    """NIfTI files often carry a 4th dimension of size 1; that is still a 3D image."""
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        return sitk.Extract(image, list(image.GetSize()[:3]) + [0], [0, 0, 0, 0])
    return image


def validate_image(image: sitk.Image, where: str, allow_constant: bool = False) -> None:
    """Refuse what cannot be segmented: not 3D, bad spacing or direction, NaN/Inf, constant."""
    dim = image.GetDimension()
    if dim != 3:
        raise InputError(f"{where}: expected a 3D image, got a {dim}D image of size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{where}: expected one value per voxel, got {image.GetNumberOfComponentsPerPixel()} "
                         "(give each channel as its own file)")
    if min(image.GetSize()) < 2:
        raise InputError(f"{where}: expected a 3D volume, got size {image.GetSize()} (a single slice)")
    spacing = image.GetSpacing()
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"{where}: voxel spacing must be positive and finite, got {spacing}")
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or abs(np.linalg.det(direction)) < _MIN_ABS_DETERMINANT:
        raise InputError(f"{where}: the direction matrix is singular or not finite: {direction.tolist()}")
    if not all(math.isfinite(o) for o in image.GetOrigin()):
        raise InputError(f"{where}: the origin is not finite: {image.GetOrigin()}")
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(f"{where}: the image has {bad} NaN or infinite voxel(s)")
    low, high = array.min(), array.max()
    # The network computes in float32: a larger value would become inf, and the normalised image NaN.
    if max(abs(float(low)), abs(float(high))) > _FLOAT32_MAX:
        raise InputError(f"{where}: voxel values range from {float(low):.4g} to {float(high):.4g}, beyond the "
                         f"{_FLOAT32_MAX:.4g} that 32-bit floats hold; rescale the image to its physical units first")
    if not allow_constant and low == high:
        raise InputError(f"{where}: the image is constant (every voxel is {array.flat[0]}); nothing to segment")


# A scan has hundreds of distinct values or more; a label map a few small integers.
LABEL_MAP_MAX_VALUES = 32
_LABEL_MAP_SAMPLE = 100_000


def warn_if_label_map(image: sitk.Image, where: str) -> None:
    """Warn when the image to segment looks like a label map (at most LABEL_MAP_MAX_VALUES distinct
    non-negative integers): segmenting a mask gives a meaningless result with exit 0."""
    array = sitk.GetArrayViewFromImage(image).reshape(-1)
    for values in (array[:: max(1, array.size // _LABEL_MAP_SAMPLE)], array):  # the sample first: cheap
        distinct = np.unique(values)
        if len(distinct) > LABEL_MAP_MAX_VALUES or distinct[0] < 0 or not np.all(distinct == np.round(distinct)):
            return
    log.warning("%s looks like a label map, not a scan: it holds only %d distinct integer values (%s). Segmenting it "
                "gives a meaningless result; give the image the labels were drawn on", where, len(distinct),
                ", ".join(str(v) for v in distinct[:8].tolist()) + (", ..." if len(distinct) > 8 else ""))


def same_grid(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-4) -> bool:
    """Same size, and origin/spacing/direction equal within `tolerance` (header float noise)."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance * max(1.0, max(a.GetSpacing())))
            and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=tolerance)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance))


def read_channels(paths: Sequence[PathLike], n_channels: int) -> List[sitk.Image]:
    """The model's input channels, one file each, on one grid."""
    if len(paths) != n_channels:
        raise InputError(f"the model takes {n_channels} input channel(s) (one file each), got {len(paths)} file(s)")
    images = [read_image(p) for p in paths]
    for path, image in zip(paths[1:], images[1:]):
        if not same_grid(images[0], image):
            raise InputError(f"{path}: channel is not on the grid of {paths[0]} (size, origin, spacing or "
                             "direction differ); resample the channels onto one grid first")
    return images


def check_output_writable(path: PathLike) -> Path:
    """Fail before inference, not after, when the output cannot be written."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir() and path.suffix:
        raise InputError(f"output {path} is a folder; give a file name")
    if not folder.exists():
        raise InputError(f"output folder {folder} does not exist")
    check_can_create_files(folder, f"output {path}")
    return path


# Kernel file systems: they exist, but no file can be made in them.
_VIRTUAL_ROOTS = ("/proc", "/sys", "/dev")


def check_can_create_files(folder: PathLike, what: str) -> None:
    """InputError naming `what` (the option and the path the user gave) unless a file can be
    created in `folder`, or in its nearest existing parent when it is still to be made."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    virtual = next((root for root in _VIRTUAL_ROOTS if str(existing.resolve()).startswith(root)
                    and str(existing.resolve())[len(root):][:1] in ("", "/")), None)
    try:  # os.access says yes to root even on read-only mounts: probe with a real file
        fd, probe = tempfile.mkstemp(prefix=".mednextv2-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        kind = f"{virtual} is the kernel's virtual file system, not a disk" if virtual else e.strerror
        raise InputError(f"{what}: the output folder {existing} is not writable ({kind}); give a path in a "
                         "folder on a disk that you can write to") from e
