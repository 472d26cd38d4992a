"""NIfTI voxel data that ITK reads without complaint but wrongly: NaN/Inf voxels read
as 0, .hdr/.img pairs skipping the header checks, a truncated .nii.gz behind a forged size trailer;
and a label map given as the image to segment, which is warned about."""
from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from segment_fixtures import write_image
from test_image_checks import _segment_refuses, breast  # noqa: F401

from mednextv2.cli import main
from mednextv2.errors import InputError
from mednextv2.inference.image_io import read_image
from mednextv2.train.checks import validate_dataset
from mednextv2.train.datasets import discover_dataset


def _with_non_finite(breast_image: sitk.Image, value: float) -> sitk.Image:
    array = sitk.GetArrayFromImage(breast_image).astype(np.float32)
    array[10, 60, 20] = value
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(breast_image)
    return image


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", ["scan.nii", "scan.nii.gz"])
def test_nan_and_inf_voxels_in_nifti_are_refused(tmp_path, breast, model_dir, capsys, value, name):
    path = write_image(_with_non_finite(breast[0], value), tmp_path / name, name.endswith(".gz"))
    assert np.isfinite(sitk.GetArrayViewFromImage(sitk.ReadImage(str(path)))).all()  # ITK hides them
    _segment_refuses(path, model_dir, capsys, "1 NaN or infinite voxel(s)")


def test_train_refuses_a_case_with_nan_voxels_in_nifti(tmp_path, breast, capsys):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for i in range(3):
        image = breast[0] if i != 1 else _with_non_finite(breast[0], float("nan"))
        write_image(image, dataset / f"case{i}_image.nii.gz", True)
        write_image(breast[1], dataset / f"case{i}_label.nii.gz", True)
    with pytest.raises(InputError, match=r"case case1: .*case1_image\.nii\.gz: the image has 1 NaN or infinite"):
        validate_dataset(discover_dataset(dataset))
    out = tmp_path / "model"
    rc = main(["train", str(dataset), "-o", str(out), "--epochs", "1", "--iterations", "1", "--patch", "16", "32", "32",
               "--device", "cpu", "--progress", "none"])
    assert rc == 2 and "NaN or infinite" in capsys.readouterr().err
    assert not out.exists()


def test_finite_float_nifti_is_read_unchanged(tmp_path, breast):
    image = _with_non_finite(breast[0], 1e30)
    for name in ("f.nii", "f.nii.gz"):
        back = read_image(write_image(image, tmp_path / name, name.endswith(".gz")))
        assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))


def _pair(image: sitk.Image, folder: Path) -> Path:
    folder.mkdir()
    header = folder / "scan.hdr"
    sitk.WriteImage(image, str(header))
    assert (folder / "scan.img").exists()
    return header


def test_hdr_img_pair_with_truncated_img_is_refused(tmp_path, breast, model_dir, capsys):
    header = _pair(breast[0], tmp_path / "pair")
    assert read_image(header).GetSize() == (45, 120, 21)  # the complete pair is fine
    data = header.with_suffix(".img")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    assert sitk.ReadImage(str(header)).GetSize() == (45, 120, 21)  # ITK zero-fills
    _segment_refuses(header, model_dir, capsys, "the file is truncated")


def test_hdr_img_pair_with_pixdim_zero_is_refused(tmp_path, breast, model_dir, capsys):
    header = _pair(breast[0], tmp_path / "pair")
    raw = bytearray(header.read_bytes())
    struct.pack_into("<f", raw, 76 + 4 * 2, 0.0)
    header.write_bytes(bytes(raw))
    assert sitk.ReadImage(str(header)).GetSpacing()[1] == 1.0  # ITK's silent 1 mm
    _segment_refuses(header, model_dir, capsys, "pixdim", "positive and finite")


def test_hdr_img_pair_with_nan_voxels_is_refused(tmp_path, breast):
    header = _pair(_with_non_finite(breast[0], float("nan")), tmp_path / "pair")
    for given in (header, header.with_suffix(".img")):
        with pytest.raises(InputError, match="1 NaN or infinite voxel"):
            read_image(given)


def _gzip_with_trailer(data: bytes, isize: int) -> bytes:
    """A gzip member of `data` whose size trailer says `isize` (the CRC of `data`, so only the size lies)."""
    body = zlib.compressobj(6, zlib.DEFLATED, -15)
    deflated = body.compress(data) + body.flush()
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + deflated
            + struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, isize & 0xFFFFFFFF))


def test_truncated_nii_gz_with_a_forged_size_trailer_is_refused(tmp_path, breast, model_dir, capsys):
    raw = write_image(breast[0], tmp_path / "scan.nii").read_bytes()
    forged = tmp_path / "forged.nii.gz"
    forged.write_bytes(_gzip_with_trailer(raw[: len(raw) * 11 // 20], len(raw)))
    assert len(zlib.decompressobj(-15).decompress(forged.read_bytes()[10:])) == len(raw) * 11 // 20
    assert struct.unpack("<I", forged.read_bytes()[-4:])[0] == len(raw)  # the trailer agrees with the header
    _segment_refuses(forged, model_dir, capsys, "the file is truncated")
    honest = tmp_path / "honest.nii.gz"
    honest.write_bytes(_gzip_with_trailer(raw, len(raw)))
    assert read_image(honest).GetSize() == (45, 120, 21)


def test_a_label_map_given_as_the_image_is_warned_about(tmp_path, breast, model_dir, caplog, capsys):
    label = write_image(breast[1], tmp_path / "label.nrrd")
    out = tmp_path / "out.seg.nrrd"
    with caplog.at_level(logging.WARNING):
        assert main(["segment", str(label), "-m", str(model_dir), "-o", str(out), "--device", "cpu",
                     "--progress", "none", "--no-tta"]) == 0
    warned = [r.getMessage() for r in caplog.records if "label map" in r.getMessage()]
    assert len(warned) == 1 and str(label) in warned[0] and "2 distinct integer values" in warned[0], warned
    caplog.clear()
    scan = write_image(breast[0], tmp_path / "scan.nrrd")
    with caplog.at_level(logging.WARNING):
        assert main(["segment", str(scan), "-m", str(model_dir), "-o", str(out), "--device", "cpu",
                     "--progress", "none", "--no-tta"]) == 0
    assert not [r for r in caplog.records if "label map" in r.getMessage()]
