"""Preprocessing: orientation, crop, normalization, resampling, and their exact inverse."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from mednextv2.bundle import Normalization, PreprocessingPlan
from mednextv2.inference.finishing import resample_argmax, to_input_grid
from mednextv2.inference.preprocessing import (fast_spacing, labels_to_network_grid, nearest_lps_axes, orient_array,
                                               preprocess, resample, slice_axis_if_anisotropic, unorient_array)
from segment_fixtures import make_image, one_torch_thread, rotation, world_points

CT = (Normalization("ct", (-1000.0, 1000.0), 0.0, 100.0),)
DIRECTIONS = {
    "identity": np.eye(3),
    "flipped": np.diag([-1.0, 1.0, -1.0]),
    "permuted": np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]),
    "oblique": rotation(25, -15, 35),
}


@pytest.mark.parametrize("name", DIRECTIONS)
def test_orientation_is_a_lossless_round_trip(name):
    perm, flips = nearest_lps_axes(DIRECTIONS[name].ravel())
    arr = np.random.default_rng(0).random((2, 3, 4, 5))
    assert np.array_equal(unorient_array(orient_array(arr, perm, flips), perm, flips), arr)
    assert sorted(perm) == [0, 1, 2]


@pytest.mark.parametrize("name", ["identity", "flipped", "permuted"])
def test_same_world_phantom_gives_the_same_network_array(name):
    """Whatever the file's direction, the network sees the same LPS-ordered array."""
    d = DIRECTIONS[name]
    size_xyz = np.array([12, 10, 8])
    # Choose the grid so it covers the same world box as the identity grid.
    spacing_world = np.array([1.0, 1.5, 3.0])
    index_to_world = np.abs(d).argmax(axis=0)  # world axis of each index axis
    size = size_xyz[index_to_world]
    spacing = spacing_world[index_to_world]
    origin = np.zeros(3)
    for i in range(3):  # flipped index axes start at the far end of the box
        if d[index_to_world[i], i] < 0:
            origin[index_to_world[i]] = (size[i] - 1) * spacing[i]
    probe = make_image(np.zeros(size[::-1]), spacing, origin, d)
    pts = world_points(probe)
    values = (pts[..., 0] * 7 + pts[..., 1] * 3 - pts[..., 2] * 11).astype(np.float32)
    image = make_image(values, spacing, origin, d)
    pre = preprocess([image], PreprocessingPlan(None, (Normalization("none"),)))
    z, y, x = np.meshgrid(np.arange(8) * 3.0, np.arange(10) * 1.5, np.arange(12) * 1.0, indexing="ij")
    expected = (x * 7 + y * 3 - z * 11).astype(np.float32)
    assert pre.record.network_spacing == (3.0, 1.5, 1.0)
    assert np.array_equal(pre.data[0], expected)


def test_separable_resampling_equals_trilinear():
    x = torch.rand(2, 7, 9, 11)
    for shape in [(13, 5, 11), (3, 20, 8)]:
        ours = resample(x.clone(), shape)
        ref = F.interpolate(x[None], size=shape, mode="trilinear", align_corners=False)[0]
        assert torch.allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("shape, nearest", [((13, 5, 11), None), ((20, 18, 22), 0), ((5, 30, 30), 1)])
def test_slab_argmax_equals_whole_volume_argmax(shape, nearest):
    prob = torch.rand(4, 7, 9, 11)
    whole = resample(prob.clone(), shape, nearest).argmax(0).numpy()
    slabs = resample_argmax(prob, shape, nearest, slab_bytes=4 * 4 * 30 * 30 * 2)  # 2 rows per slab
    assert np.array_equal(whole, slabs)


def test_anisotropy_rule_and_fast_spacing():
    assert slice_axis_if_anisotropic((5.0, 0.7, 0.7), None) == 0
    assert slice_axis_if_anisotropic((1.0, 1.0, 1.0), (1.0, 0.8, 1.0)) is None
    assert slice_axis_if_anisotropic((1.0, 1.0, 1.0), (1.0, 1.0, 4.0)) == 2
    plan = PreprocessingPlan((5.0, 0.7, 0.7), CT)
    assert fast_spacing(plan, None, (5.0, 0.6, 0.6)) == (5.0, 1.4, 1.4)
    assert fast_spacing(PreprocessingPlan(None, CT), None, (1.0, 1.0, 1.0)) == (2.0, 2.0, 2.0)
    assert fast_spacing(plan, (6.0, 3.0, 3.0), (1.0, 1.0, 1.0)) == (6.0, 3.0, 3.0)


def test_crop_normalize_and_inverse_paste():
    arr = np.zeros((10, 12, 14), np.float32)
    arr[2:7, 3:9, 4:13] = np.random.default_rng(1).normal(50, 10, (5, 6, 9))
    image = make_image(arr, spacing=(1.0, 1.0, 1.0))
    plan = PreprocessingPlan(None, (Normalization("zscore"),), crop_to_nonzero=True)
    pre = preprocess([image], plan)
    assert pre.record.bbox == ((2, 7), (3, 9), (4, 13))
    assert pre.data.shape == (1, 5, 6, 9)
    assert abs(pre.data.mean()) < 1e-4 and abs(pre.data.std() - 1) < 1e-3
    # one-hot "probabilities" of a label pattern inside the box come back exactly, zero outside
    labels = (pre.data[0] > 0).astype(np.int64)
    prob = F.one_hot(torch.from_numpy(labels), 2).permute(3, 0, 1, 2).float()
    back = to_input_grid(prob, pre.record)
    assert back.shape == arr.shape
    assert np.array_equal(back[2:7, 3:9, 4:13], labels) and back.sum() == labels.sum()


def test_ct_normalization_clips_and_scales():
    arr = np.array([-3000, -1000, 0, 400, 3000], np.float32).reshape(1, 1, 5).repeat(2, 0).repeat(2, 1)
    pre = preprocess([make_image(arr)], PreprocessingPlan(None, (Normalization("ct", (-1000.0, 400.0), -300.0, 400.0),)))
    assert np.allclose(pre.data[0, 0, 0], [-1.75, -1.75, 0.75, 1.75, 1.75])


@pytest.mark.parametrize("name", DIRECTIONS)
def test_labels_round_trip_through_the_network_grid(name):
    """Labels on the input grid -> network grid (nearest) -> back (linear on one-hot) are unchanged
    away from label boundaries, for every direction and an anisotropic input."""
    rng = np.random.default_rng(2)
    labels = np.zeros((12, 30, 28), np.uint8)
    labels[3:9, 5:20, 6:22] = 1
    labels[5:8, 10:14, 9:13] = 2
    image = make_image(rng.normal(0, 1, labels.shape).astype(np.float32), (0.8, 0.9, 3.5), (1, 2, 3), DIRECTIONS[name])
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(image)
    pre = preprocess([image], PreprocessingPlan((1.5, 1.2, 1.2), (Normalization("zscore"),)))
    net = labels_to_network_grid(label_image, pre.record)
    assert net.shape == pre.record.network_shape
    prob = F.one_hot(torch.from_numpy(net.astype(np.int64)), 3).permute(3, 0, 1, 2).float()
    back = to_input_grid(prob, pre.record)
    from segment_fixtures import boundary
    interior = ~boundary(labels)
    assert np.array_equal(back[interior], labels[interior])
