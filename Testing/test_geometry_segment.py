"""Geometry: outputs lie exactly on the input grid, labels land at the right world positions.

The model is a real MedNeXt whose weights compute intensity thresholds (segment_fixtures), so
the correct labels are known for any image; only voxels next to a label boundary may differ
after the resampling round trip (input grid -> network spacing -> input grid).
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from mednextv2 import segment
from mednextv2.inference.export import write_result
from segment_fixtures import (boundary, make_image, one_torch_thread, rotation, threshold_bundle,  # noqa: F401
                              world_points)

DIRECTIONS = {
    "axis-aligned": np.eye(3),
    "flipped": np.diag([-1.0, -1.0, 1.0]),  # RAS-like
    "permuted": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),  # sagittal-style, with a flip
    "oblique": rotation(20, -30, 40),
}


def assert_same_grid(a: sitk.Image, b: sitk.Image, atol: float = 0.0):
    assert a.GetSize() == b.GetSize()
    for get in ("GetOrigin", "GetSpacing", "GetDirection"):
        np.testing.assert_allclose(getattr(a, get)(), getattr(b, get)(), atol=atol, rtol=0, err_msg=get)


def _blobs(shape):
    """Smooth asymmetric intensity field: a large off-centre blob and a small bright one."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    big = 1000 * np.exp(-(((z - 0.45 * shape[0]) / (0.35 * shape[0])) ** 2 + ((y - 0.4 * shape[1]) / (0.3 * shape[1])) ** 2
                          + ((x - 0.55 * shape[2]) / (0.3 * shape[2])) ** 2))
    small = 1200 * np.exp(-(((z - 0.6 * shape[0]) / 4) ** 2 + ((y - 0.7 * shape[1]) / 5) ** 2 + ((x - 0.3 * shape[2]) / 5) ** 2))
    return (big + small).astype(np.float32)


@pytest.mark.parametrize("name", DIRECTIONS)
def test_known_function_survives_the_resampling_round_trip(name):
    arr = _blobs((18, 40, 44))
    image = make_image(arr, spacing=(0.9, 1.1, 3.2), origin=(-20.5, 14.0, 3.3), direction=DIRECTIONS[name])
    bundle = threshold_bundle((300.0, 800.0), target_spacing=(2.0, 1.6, 1.6), mirror_axes=(0, 1, 2))
    out = segment(image, bundle, device="cpu", tile_batch=2)
    assert_same_grid(out, image)
    labels = sitk.GetArrayFromImage(out)
    expected = np.digitize(arr, [300.0, 800.0]).astype(np.uint8)
    assert set(np.unique(expected)) == {0, 1, 2}
    wrong = labels != expected
    assert wrong.mean() < 0.03
    assert not wrong[~boundary(expected, width=1)].any(), f"{wrong[~boundary(expected, 1)].sum()} interior voxels wrong"


def _sphere_grid(direction, centre, size=(40, 36, 30), spacing=(1.2, 1.0, 2.5)):
    """A grid with this direction whose middle is at `centre`; sphere of radius 10 mm at centre."""
    d = np.asarray(direction)
    half = (np.array(size) - 1) / 2 * np.array(spacing)
    origin = np.asarray(centre) - d @ half
    probe = make_image(np.zeros(size[::-1], np.float32), spacing, origin, d)
    r = np.linalg.norm(world_points(probe) - centre, axis=-1)
    values = (1000.0 / (1 + np.exp((r - 10.0) / 0.8))).astype(np.float32)  # smooth sphere edge
    return make_image(values, spacing, origin, d)


def test_world_position_phantom_lands_at_the_same_place():
    """The same world-space sphere written with four direction matrices: the segmented sphere's
    world centroid and volume agree, and match the truth."""
    centre = np.array([12.0, -25.0, 40.0])
    bundle = threshold_bundle((500.0,), target_spacing=(2.0, 1.5, 1.5), mirror_axes=())
    results = []
    for direction in DIRECTIONS.values():
        image = _sphere_grid(direction, centre)
        out = segment(image, bundle, device="cpu")
        assert_same_grid(out, image)
        mask = sitk.GetArrayFromImage(out) == 1
        pts = world_points(out)[mask]
        volume = mask.sum() * np.prod(out.GetSpacing())
        results.append((pts.mean(axis=0), volume))
    true_volume = 4 / 3 * np.pi * 10.0 ** 3
    for centroid, volume in results:
        np.testing.assert_allclose(centroid, centre, atol=0.5)
        assert abs(volume / true_volume - 1) < 0.1


@pytest.fixture(scope="module")
def lung_ct(data_dir):
    return sitk.ReadImage(str(data_dir / "ct-lung" / "lung1_image.nrrd"))


def test_real_anisotropic_lps_ct_grid_and_labels(lung_ct, tmp_path):
    """Real CT, 5 mm slices, LPS NRRD: output grid identical, also after writing both file types."""
    assert lung_ct.GetSpacing()[2] == 5.0
    bundle = threshold_bundle((-500.0,), patch=(16, 64, 64), target_spacing=(5.0, 4.0, 4.0), mirror_axes=())
    out = segment(lung_ct, bundle, device="cpu", tile_batch=4)
    assert_same_grid(out, lung_ct)
    arr = sitk.GetArrayViewFromImage(lung_ct)
    expected = (arr > -500).astype(np.uint8)
    labels = sitk.GetArrayViewFromImage(out)
    assert (labels == expected).mean() > 0.97
    # everything well inside a region (3 voxels in-plane at 0.57 mm < one 4 mm network voxel) is exact
    assert (labels != expected)[~boundary(expected, width=4)].mean() < 1e-3
    for name in ("ct.seg.nrrd", "ct.nii.gz"):
        written = sitk.ReadImage(str(write_result(out, bundle.labels, tmp_path / name)))
        assert_same_grid(written, lung_ct, atol=1e-4)
        assert np.array_equal(sitk.GetArrayViewFromImage(written), labels)


def test_real_ras_nifti_grid(data_dir):
    """Real RAS NIfTI (direction diag(-1, -1, 1) in ITK's LPS): output grid identical."""
    image = sitk.ReadImage(str(data_dir / "mr-brain-tissue" / "icbm152_2009a_t1.nii.gz"))
    assert image.GetDirection()[0] == -1.0
    bundle = threshold_bundle((100.0,), patch=(32, 64, 64), target_spacing=(4.0, 4.0, 4.0), mirror_axes=(0, 1, 2))
    out = segment(image, bundle, device="cpu", tile_batch=2)
    assert_same_grid(out, image)
    arr = sitk.GetArrayViewFromImage(image)
    expected = (arr > 100).astype(np.uint8)
    labels = sitk.GetArrayViewFromImage(out)
    assert (labels == expected).mean() > 0.95
    assert (labels != expected)[~boundary(expected, width=3)].mean() < 1e-3
