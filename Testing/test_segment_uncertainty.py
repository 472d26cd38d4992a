"""The uncertainty map: a known answer on rotated, flipped and anisotropic grids, on exactly the
input's grid, and the finishing step's entropy against a direct computation."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from mednextv2.errors import InputError
from mednextv2.inference import finishing, preprocessing
from mednextv2.inference.pipeline import Segmenter, segment, segment_with_uncertainty
from segment_fixtures import (SHARPNESS, make_image, one_torch_thread, rotation, threshold_bundle,  # noqa: F401
                              world_points)

THRESHOLD_HU = 300.0
SLOPE_HU_PER_MM = 5.0  # the logits cross over about 2 mm: several voxels of the boundary are unsure


def _ramp(shape, spacing, direction, normal):
    """A CT-like image whose intensity rises along the world direction `normal` and equals the
    model's threshold on the plane through the volume's centre: the known boundary."""
    geometry = make_image(np.zeros(shape, np.float32), spacing=spacing, origin=(3.0, -5.0, 7.0), direction=direction)
    points = world_points(geometry)
    normal = np.asarray(normal, float) / np.linalg.norm(normal)
    hu = THRESHOLD_HU + SLOPE_HU_PER_MM * ((points - points[tuple(s // 2 for s in shape)]) @ normal)
    return make_image(hu.astype(np.float32), spacing=spacing, origin=(3.0, -5.0, 7.0), direction=direction), hu


def _expected_uncertainty(hu: np.ndarray) -> np.ndarray:
    """The threshold model's two logits differ by SHARPNESS * (HU - threshold) / 100 (ct
    normalisation, std 100): (1 - the larger softmax probability) x 2, in float64."""
    d = np.abs(SHARPNESS * (hu - THRESHOLD_HU) / 100.0)
    return 2.0 / (1.0 + np.exp(d))  # 1 - sigmoid(d) = sigmoid(-d)


GRIDS = {
    "rotated": ((30, 34, 38), (1.1, 0.9, 1.3), rotation(20, -15, 30), (1, 2, 3)),
    "flipped and permuted": ((26, 30, 34), (0.8, 1.2, 2.0), np.array([[0, -1, 0], [0, 0, 1], [-1, 0, 0]]), (2, -1, 1)),
    "anisotropic": ((12, 40, 44), (0.7, 0.7, 4.0), None, (1, 1, 0)),  # 4 mm slices: nearest along z
}


@pytest.fixture(scope="module")
def mirrored_segmenter():
    return Segmenter(threshold_bundle((THRESHOLD_HU,)), device="cpu")  # mirror TTA on all three axes


@pytest.mark.parametrize("grid", list(GRIDS))
def test_known_boundary_is_unsure_and_the_rest_sure_on_the_input_grid(grid, mirrored_segmenter):
    shape, spacing, direction, normal = GRIDS[grid]
    image, hu = _ramp(shape, spacing, direction, normal)
    labelmap, uncertainty = mirrored_segmenter.segment_with_uncertainty(image)

    for get in ("GetSize", "GetOrigin", "GetSpacing", "GetDirection"):
        assert getattr(uncertainty, get)() == getattr(image, get)() == getattr(labelmap, get)(), get
    assert uncertainty.GetPixelID() == sitk.sitkFloat32
    u = sitk.GetArrayFromImage(uncertainty)
    assert u.min() >= 0.0 and u.max() <= 1.0
    # A linear ramp survives the linear resampling both ways, so away from the edges (where the
    # resampling clamps) the map is the float64 answer up to float16 accumulation.
    inner = np.zeros(shape, bool)
    inner[2:-2, 2:-2, 2:-2] = True
    far, near = np.abs(hu - THRESHOLD_HU) > 40, np.abs(hu - THRESHOLD_HU) < 1  # 8 mm vs 0.2 mm from the plane
    assert far.sum() > 1000 and (near & inner).sum() > 20
    assert u[far].max() < 0.01
    assert u[near & inner].min() > 0.85 and u[near].min() > 0.5
    assert np.abs(u - _expected_uncertainty(hu))[inner].max() < 2e-3
    assert np.array_equal(sitk.GetArrayFromImage(labelmap)[~near], (hu > THRESHOLD_HU)[~near])


def test_api_returns_the_same_labelmap_with_its_map_and_refuses_file_options():
    image, _ = _ramp(*GRIDS["rotated"])
    bundle = threshold_bundle((THRESHOLD_HU,), mirror_axes=())
    labelmap, uncertainty = segment_with_uncertainty(image, bundle, device="cpu")
    plain = segment(image, bundle, device="cpu")
    assert np.array_equal(sitk.GetArrayFromImage(labelmap), sitk.GetArrayFromImage(plain))
    assert uncertainty.GetSize() == image.GetSize()
    with pytest.raises(InputError, match="writes no files"):
        segment(image, bundle, device="cpu", uncertainty="map.nrrd")


def test_class_uncertainty_matches_a_direct_computation_for_logits_and_probabilities():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, 4, 6, generator=generator, dtype=torch.float64) * 4
    p = torch.softmax(logits, 0)
    direct = (1 - p.max(0).values) * 5 / 4
    assert torch.allclose(preprocessing.class_uncertainty(logits).double(), direct, atol=1e-6)
    assert torch.allclose(preprocessing.class_uncertainty(p * 1.001, probabilities=True).double(), direct, atol=1e-6)
    equal = torch.zeros(3, 2, 2, 2)
    assert torch.allclose(preprocessing.class_uncertainty(equal), torch.ones(2, 2, 2))
    certain = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1, 1).expand(3, 2, 2, 2)
    assert preprocessing.class_uncertainty(certain, probabilities=True).max() == 0


def test_the_map_is_the_same_whatever_the_slab_size():
    """Computed slab by slab: the slab boundaries must not show in the map."""
    scores = torch.randn(3, 9, 11, 13, generator=torch.Generator().manual_seed(1)).to(torch.float16)
    maps = []
    for slab_bytes in (1, 3 * 20 * 26 * 4 * 3, 1 << 30):
        u = np.zeros((20, 26, 30), np.float32)
        labels = finishing.resample_argmax(scores, (20, 26, 30), None, slab_bytes, uncertainty=u)
        maps.append((labels, u))
    for labels, u in maps[1:]:
        assert np.array_equal(labels, maps[0][0]) and np.allclose(u, maps[0][1], atol=1e-6)
    whole = preprocessing.resample(scores.float(), (20, 26, 30))
    assert np.allclose(maps[0][1], preprocessing.class_uncertainty(whole).numpy(), atol=1e-6)
