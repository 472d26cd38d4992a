"""Image input: DICOM series folders, geometry kept, in-memory images validated like files."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from mednextv2.errors import InputError
from mednextv2.inference.image_io import check_output_writable, read_channels, read_image, validate_image
from segment_fixtures import make_image, rotation


def _write_dicom_series(image: sitk.Image, folder):
    """One CT slice per file with the position/orientation tags a scanner writes."""
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    series_tags = [("0008|0060", "CT"), ("0020|000e", "1.2.826.0.1.3680043.2.1125.1.99"),
                   ("0020|0037", "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))),
                   ("0028|1052", "0"), ("0028|1053", "1")]
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        for tag, value in series_tags:
            slice_.SetMetaData(tag, value)
        slice_.SetMetaData("0020|0032", "\\".join(f"{v:.10f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        slice_.SetMetaData("0020|0013", str(k + 1))
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_)


def test_dicom_folder_keeps_geometry(tmp_path):
    arr = np.random.default_rng(0).integers(-1000, 1000, (6, 20, 24)).astype(np.int16)
    image = make_image(arr, spacing=(0.7, 0.8, 2.5), origin=(-10.0, 20.0, 30.0), direction=rotation(0, 0, 30))
    _write_dicom_series(image, tmp_path / "series")
    back = read_image(tmp_path / "series")
    assert back.GetSize() == image.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-5)
    assert np.array_equal(sitk.GetArrayFromImage(back), arr)


def test_folder_without_dicom_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        read_image(tmp_path / "empty")


def test_nifti_with_unit_fourth_dimension_is_3d(tmp_path):
    image = sitk.JoinSeries([make_image(np.random.rand(4, 5, 6).astype(np.float32))])
    sitk.WriteImage(image, str(tmp_path / "t.nii.gz"))
    assert read_image(tmp_path / "t.nii.gz").GetDimension() == 3


def test_in_memory_checks():
    good = make_image(np.random.rand(4, 5, 6).astype(np.float32))
    validate_image(good, "x")
    nan_spacing = make_image(np.random.rand(4, 5, 6).astype(np.float32))
    nan_spacing.SetSpacing((1.0, float("nan"), 1.0))
    with pytest.raises(InputError, match="spacing must be positive"):
        validate_image(nan_spacing, "x")
    vector = sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 2)
    with pytest.raises(InputError, match="one value per voxel"):
        validate_image(vector, "x")
    single = make_image(np.random.rand(1, 5, 6).astype(np.float32))
    with pytest.raises(InputError, match="single slice"):
        validate_image(single, "x")


def test_channels_must_share_a_grid(tmp_path):
    a = make_image(np.random.rand(4, 5, 6).astype(np.float32))
    b = make_image(np.random.rand(4, 5, 6).astype(np.float32), spacing=(1.0, 1.0, 2.0))
    sitk.WriteImage(a, str(tmp_path / "a.nrrd"))
    sitk.WriteImage(b, str(tmp_path / "b.nrrd"))
    assert len(read_channels([tmp_path / "a.nrrd", tmp_path / "a.nrrd"], 2)) == 2
    with pytest.raises(InputError, match="b.nrrd: channel is not on the grid"):
        read_channels([tmp_path / "a.nrrd", tmp_path / "b.nrrd"], 2)
    with pytest.raises(InputError, match="takes 2 input channel"):
        read_channels([tmp_path / "a.nrrd"], 2)


def test_output_checks(tmp_path):
    assert check_output_writable(tmp_path / "x.seg.nrrd") == tmp_path / "x.seg.nrrd"
    with pytest.raises(InputError, match="not writable"):
        check_output_writable("/proc/x.seg.nrrd")
    assert list(tmp_path.iterdir()) == []
