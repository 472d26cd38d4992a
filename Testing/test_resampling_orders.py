"""One anisotropy rule, and the resampling orders of imported nnU-Net models."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from mednextv2.bundle import Normalization, PreprocessingPlan, ResampleOrder, Resampling
from mednextv2.inference import finishing, preprocessing
from mednextv2.inference.preprocessing import anisotropic_axis, slice_axis_if_anisotropic
from mednextv2.train import planning, run

CT = (Normalization("ct", (-1000.0, 500.0), -300.0, 400.0),)


def test_one_anisotropy_rule_for_resampling_planning_and_augmentation():
    cases = {(5.0, 0.57, 0.57): 0, (0.9, 0.9, 2.5): None, (0.8, 0.8, 2.41): 2, (0.8, 0.8, 2.4): None,
             (1.0, 1.0, 1.0): None, (3.0, 1.0, 1.0): None, (3.01, 1.0, 1.0): 0,
             (5.0, 5.0, 1.0): None,  # two coarse axes: nnU-Net resamples all axes together
             (3.0, 2.5, 0.8): 0}     # largest over smallest decides, not largest over second
    for spacing, axis in cases.items():
        assert anisotropic_axis(spacing) == axis, spacing
        assert run._thick_slice_axis(spacing) == axis, spacing
        assert slice_axis_if_anisotropic(spacing, None) == axis, spacing
        # the planner replaces the coarse axis's median by its 10th percentile exactly when the rule says so
        spacings = [spacing, tuple(s * (1.5 if a == axis else 1.0) for a, s in enumerate(spacing))] * 3
        target = planning.target_spacing(SimpleNamespace(spacings=spacings))
        median = np.median(np.array(spacings), axis=0)
        changed = [a for a in range(3) if not np.isclose(target[a], median[a])]
        assert changed == ([] if axis is None else [axis]), spacing
    assert planning.anisotropic_axis is run.anisotropic_axis is preprocessing.anisotropic_axis
    # the target decides when the input is isotropic; a plan may force or forbid the separate axis
    assert slice_axis_if_anisotropic((1.0, 1.0, 1.0), (1.0, 1.0, 4.0)) == 2
    assert slice_axis_if_anisotropic((5.0, 0.7, 0.7), None, force_separate=False) is None
    assert slice_axis_if_anisotropic((1.2, 1.0, 1.0), None, force_separate=True) == 0


@pytest.fixture(scope="module")
def lung_crop(data_dir):
    image = sitk.ReadImage(str(data_dir / "ct-lung" / "lung1_image.nrrd"))
    return image[200:296, 180:276, 10:22]  # 12 slices of 5 mm at 0.57 mm in-plane


def _plan(resampling=None):
    return PreprocessingPlan((5.0, 0.9, 0.9), CT, orientation="as-is", resampling=resampling)


def test_own_bundles_stay_linear_and_imported_ones_use_the_plans_spline(lung_crop):
    linear = preprocessing.preprocess([lung_crop], _plan())
    raw = sitk.GetArrayFromImage(lung_crop).astype(np.float32)[None]
    normalized = preprocessing.normalize_channel(raw[0].copy(), CT[0], None)[None]
    expected = preprocessing.resample(torch.from_numpy(normalized), linear.record.network_shape, 0).numpy()
    np.testing.assert_array_equal(linear.data, expected)  # unchanged for bundles without `resampling`

    cubic = preprocessing.preprocess([lung_crop], _plan(Resampling(ResampleOrder(3, 0), ResampleOrder(1, 0))))
    assert cubic.data.shape == linear.data.shape == (1, 12, 61, 61)
    assert np.abs(cubic.data - linear.data).max() > 0.05  # the spline is another interpolation ...
    assert np.abs(cubic.data - linear.data).mean() < 0.05  # ... of the same image
    # order_z 0: the slices are resampled one by one in-plane and never blended with each other
    from scipy import ndimage
    plane = normalized[0, 5].astype(np.float64)
    one_slice = ndimage.zoom(plane, (61 / 96, 61 / 96), order=3, mode="nearest", grid_mode=True)
    np.testing.assert_allclose(cubic.data[0, 5], one_slice.clip(plane.min(), plane.max()), atol=1e-5)

    # nnU-Net v1 order: resample the raw image, then normalise (the CT clip acts after the spline)
    v1 = preprocessing.preprocess([lung_crop], _plan(Resampling(ResampleOrder(3, 0), ResampleOrder(1, 0),
                                                                normalize_first=False)))
    spline_raw = ndimage.zoom(raw[0, 5].astype(np.float64), (61 / 96, 61 / 96), order=3, mode="nearest", grid_mode=True)
    spline_raw = spline_raw.clip(raw[0, 5].min(), raw[0, 5].max())
    expected_v1 = preprocessing.normalize_channel(spline_raw.astype(np.float32), CT[0], None)
    np.testing.assert_allclose(v1.data[0, 5], expected_v1, atol=1e-5)
    assert not np.allclose(v1.data, cubic.data, atol=1e-3)


def test_softmax_first_changes_only_how_scores_go_back(lung_crop):
    plain = preprocessing.preprocess([lung_crop], _plan(Resampling(ResampleOrder(3, 0), ResampleOrder(1, 0))))
    v1 = preprocessing.preprocess([lung_crop], _plan(Resampling(ResampleOrder(3, 0), ResampleOrder(1, 0),
                                                                softmax_first=True)))
    assert not plain.record.softmax_first and v1.record.softmax_first
    # saturated logits: interpolating logits and interpolating probabilities disagree at the edge
    x = torch.from_numpy(plain.data[0])
    logits = torch.stack([torch.zeros_like(x), 40.0 * (x - x.mean())])
    by_logits = finishing.to_input_grid(logits, plain.record)
    by_softmax = finishing.to_input_grid(logits, v1.record)
    expected = finishing.to_input_grid(torch.softmax(logits, 0), plain.record)
    np.testing.assert_array_equal(by_softmax, expected)
    assert (by_logits != by_softmax).any()


def test_cubic_spline_overshoot_is_clipped_per_resize_as_skimage_does(lung_crop):
    """nnU-Net resizes with skimage (clip=True): the spline's overshoot at sharp edges is cut to the
    range of what each resize call got, i.e. of each slice when slices are resampled separately."""
    from scipy import ndimage

    raw = sitk.GetArrayFromImage(lung_crop).astype(np.float32)
    data = preprocessing.normalize_channel(raw, CT[0], None)[None, 5:7].copy()  # CT clip: flat plateaus, sharp edges
    data[0, 1] *= 0.25  # the second slice has its own range
    out = preprocessing.resample_spline(data, (2, 61, 61), separate_axis=0, order=3, order_z=0)
    for z in range(2):
        plane = data[0, z].astype(np.float64)
        raw_spline = ndimage.zoom(plane, [61 / 96, 61 / 96], order=3, mode="nearest", grid_mode=True)
        assert raw_spline.min() < plane.min() or raw_spline.max() > plane.max()  # the spline overshoots here
        np.testing.assert_allclose(out[0, z], np.clip(raw_spline, plane.min(), plane.max()), rtol=1e-6, atol=1e-5)
