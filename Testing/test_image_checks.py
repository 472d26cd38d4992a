"""Broken image files that ITK reads without complaint are refused:
truncated files, values beyond float32, DICOM series with a missing slice, NIfTI pixdim 0."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_segment_image_io import _write_dicom_series

from mednextv2.cli import main
from mednextv2.errors import InputError
from mednextv2.inference.image_io import read_image
from mednextv2.train.checks import validate_dataset
from mednextv2.train.datasets import discover_dataset
from segment_fixtures import write_image


@pytest.fixture(scope="module")
def breast(data_dir):
    """A real MR scan (45x120x21, int16) and its lesion label."""
    folder = data_dir / "mr-breast"
    return sitk.ReadImage(str(folder / "breast1_image.nrrd")), sitk.ReadImage(str(folder / "breast1_label.nrrd"))


def _segment_refuses(path: Path, model_dir: Path, capsys, *needles: str) -> str:
    out = path.parent / "out.seg.nrrd"
    rc = main(["segment", str(path), "-m", str(model_dir), "-o", str(out), "--device", "cpu", "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 2, f"{path.name}: exit {rc}: {err}"
    assert str(path) in err and "Traceback" not in err, err
    for needle in needles:
        assert needle.lower() in err.lower(), err
    assert not out.exists()
    return err


def _cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    cut = path.with_name("cut_" + path.name)
    cut.write_bytes(data[: int(len(data) * fraction)])
    return cut


@pytest.mark.parametrize("name,compress,reason", [
    ("scan.nii.gz", True, "the file is truncated: its header promises"),  # ITK zero-fills these two
    ("scan.nii", False, "the file is truncated: its header promises"),
    ("scan.nrrd", False, "the file is truncated: it holds fewer voxel bytes"),  # ITK refuses the others
    ("scan.nrrd", True, "the file is truncated: it holds fewer voxel bytes"),
    ("scan.mha", False, "the file is truncated, or its data file is missing")])
def test_truncated_image_exits_2_naming_the_file(tmp_path, breast, model_dir, capsys, name, compress, reason):
    whole = write_image(breast[0], tmp_path / name, compress)
    assert read_image(whole).GetSize() == (45, 120, 21)  # the complete file is fine
    for fraction in (0.5, 0.99):  # half the file, and only the last slice's end missing
        _segment_refuses(_cut(whole, fraction), model_dir, capsys, reason)


def test_truncated_training_label_is_refused(tmp_path, breast):
    # Training reads its images and labels through the same reader as segment.
    for name in ("label.nii", "label.nii.gz"):
        label = _cut(write_image(breast[1], tmp_path / name, name.endswith(".gz")), 0.7)
        with pytest.raises(InputError, match=rf"{label.name}: the file is truncated.*45x120x21 voxels"):
            read_image(label)


def test_train_refuses_a_case_with_a_truncated_label(tmp_path, breast, capsys):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for i in range(3):
        write_image(breast[0], dataset / f"case{i}_image.nii")
        write_image(breast[1], dataset / f"case{i}_label.nii")
    label = dataset / "case1_label.nii"
    label.write_bytes(label.read_bytes()[:160_000])
    out = tmp_path / "model"
    rc = main(["train", str(dataset), "-o", str(out), "--epochs", "1", "--iterations", "1", "--patch", "16", "32", "32",
               "--device", "cpu", "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{label}: the file is truncated" in err, err
    assert not out.exists()


def test_dataset_check_names_a_truncated_label_before_planning(tmp_path, breast):
    # The dataset check reads label headers only through ITK, which lets a short .nii pass; it must
    # list the file up front, with the case, rather than fail later in the training cache.
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for i in range(3):
        write_image(breast[0], dataset / f"case{i}_image.nii")
        write_image(breast[1], dataset / f"case{i}_label.nii.gz", True)
    label = dataset / "case2_label.nii.gz"
    label.write_bytes(label.read_bytes()[: len(label.read_bytes()) * 6 // 10])
    with pytest.raises(InputError, match=rf"case case2: {label}: the file is truncated"):
        validate_dataset(discover_dataset(dataset))


def test_complete_gzip_variants_are_accepted(tmp_path, breast):
    # The fast length check fails for these, so they take the full decompression path.
    raw = write_image(breast[0], tmp_path / "scan.nii").read_bytes()
    members = tmp_path / "members.nii.gz"
    members.write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:]))
    padded = tmp_path / "padded.nii.gz"
    padded.write_bytes(gzip.compress(raw) + b"\0" * 64)
    expected = sitk.GetArrayFromImage(breast[0])
    for path in (members, padded):
        assert np.array_equal(sitk.GetArrayFromImage(read_image(path)), expected)


def test_values_beyond_float32_exit_2(tmp_path, breast, model_dir, capsys):
    array = sitk.GetArrayFromImage(breast[0]).astype(np.float64)
    fits = sitk.GetImageFromArray(array * 1e30)  # large but representable: accepted
    fits.CopyInformation(breast[0])
    assert read_image(write_image(fits, tmp_path / "fits.nrrd")).GetPixelID() == sitk.sitkFloat64
    huge = sitk.GetImageFromArray(array * 1e298)  # the scan's values reach ~1e301
    huge.CopyInformation(breast[0])
    _segment_refuses(write_image(huge, tmp_path / "huge.nii.gz"), model_dir, capsys, "32-bit floats")


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path, breast):
    crop = breast[0][:, 30:90, 4:12]
    folder = tmp_path / "series"
    _write_dicom_series(crop, folder)
    back = read_image(folder)
    np.testing.assert_allclose(back.GetSpacing(), crop.GetSpacing(), atol=1e-4)
    (folder / "slice004.dcm").unlink()
    with pytest.raises(InputError, match=r"series: the DICOM slices are not evenly spaced: most are 2\.1 mm apart.*"
                                         r"4\.2 mm between slice003\.dcm and slice005\.dcm.*missing"):
        read_image(folder)


@pytest.mark.parametrize("value", [0.0, -0.7, float("nan")])
def test_nifti_pixdim_zero_negative_or_nan_is_refused(tmp_path, breast, model_dir, capsys, value):
    header = bytearray(write_image(breast[0], tmp_path / "scan.nii").read_bytes())
    struct.pack_into("<f", header, 76 + 4 * 2, value)  # pixdim[2]: the y spacing
    plain = tmp_path / "pixdim.nii"
    plain.write_bytes(bytes(header))
    _segment_refuses(plain, model_dir, capsys, "pixdim", "positive and finite")
    packed = tmp_path / "pixdim.nii.gz"
    packed.write_bytes(gzip.compress(bytes(header)))
    with pytest.raises(InputError, match=r"pixdim\.nii\.gz: the NIfTI header gives voxel spacing \(pixdim\)"):
        read_image(packed)


def test_a_fifo_as_input_is_refused_not_read_forever(tmp_path, model_dir, capsys):
    import os
    import threading

    fifo = tmp_path / "scan.nrrd"
    os.mkfifo(fifo)

    stop = threading.Event()

    def feed():  # a writer, so that a reader opening the pipe (as often as it likes) gets bytes, never blocks
        while not stop.is_set():
            try:
                with open(fifo, "wb") as f:
                    f.write(b"NRRD0004\n")
            except OSError:
                pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        _segment_refuses(fifo, model_dir, capsys, "is not a regular file (a pipe, socket or device)")
    finally:
        stop.set()
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # releases a writer waiting for a reader
        writer.join(5)


@pytest.mark.parametrize("suffix", [".nhdr", ".mhd"])
def test_a_detached_header_whose_data_file_is_missing_names_that_file(tmp_path, breast, model_dir, capsys, suffix):
    header = write_image(breast[0], tmp_path / f"scan{suffix}")
    assert read_image(header).GetSize() == (45, 120, 21)
    text = header.read_text(encoding="latin-1")
    data_name = next(line for line in text.splitlines()
                     if line.lower().startswith(("data file:", "elementdatafile"))).split(":" if suffix == ".nhdr" else "=")[1].strip()
    (tmp_path / data_name).unlink()
    _segment_refuses(header, model_dir, capsys, f"its data file {tmp_path / data_name}", "does not exist")


def test_a_fifo_in_a_training_dataset_is_named_not_read(tmp_path, breast):
    import os

    write_image(breast[0], tmp_path / "case1_image.nrrd")
    os.mkfifo(tmp_path / "case1_label.nrrd")  # nobody writes: opening it would block forever
    with pytest.raises(InputError, match=r"case1_label\.nrrd is not a regular file"):
        validate_dataset(discover_dataset(tmp_path))
