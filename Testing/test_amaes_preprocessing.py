"""The preprocessing AMAES's encoders were pretrained with, as our plan applies it: nibabel's
canonical RAS array (what Yucca feeds its networks) and Yucca's volume z-norm with rescale, on
the real T1 template (the real data's mr-brain-tissue, a NIfTI stored in RAS)."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from mednextv2.bundle import Normalization, PreprocessingPlan
from mednextv2.inference.finishing import to_input_grid
from mednextv2.inference.preprocessing import normalize_channel, preprocess
from mednextv2.train.planning import AMAES_NORMALIZATION

NONE = (Normalization("none"),)


def _t1(data_dir) -> sitk.Image:
    image = sitk.ReadImage(str(data_dir / "mr-brain-tissue" / "icbm152_2009a_t1.nii.gz"), sitk.sitkFloat32)
    return image[::3, ::3, ::3]  # every third voxel: the same world directions, a quick test


def test_ras_array_is_nibabels_canonical_array_whatever_the_file_layout(data_dir):
    image = _t1(data_dir)
    # The file is stored in RAS (ITK's LPS direction diag(-1, -1, 1)): nibabel's canonical array
    # is then the stored voxels indexed [i, j, k], i.e. SimpleITK's [k, j, i] array transposed.
    assert np.allclose(np.array(image.GetDirection()).reshape(3, 3), np.diag([-1.0, -1.0, 1.0]))
    nibabel_array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    plan = PreprocessingPlan(None, NONE, orientation="RAS")
    # The same voxels in the same world places, stored in other orders: the network array is the same.
    layouts = {"as stored": image, "permuted": sitk.PermuteAxes(image, [2, 0, 1]),
               "flipped": sitk.Flip(image, [True, False, True]),
               "both": sitk.Flip(sitk.PermuteAxes(image, [1, 2, 0]), [False, True, True])}
    for name, layout in layouts.items():
        pre = preprocess([layout], plan)
        assert np.array_equal(pre.data[0], nibabel_array), name
        assert pre.record.network_spacing == (3.0, 3.0, 3.0)
        # ... and labels go back onto exactly the input grid.
        labels = (sitk.GetArrayFromImage(layout) > 40).astype(np.uint8)
        label_image = sitk.GetImageFromArray(labels.astype(np.float32))
        label_image.CopyInformation(layout)
        oriented = preprocess([label_image], plan)
        scores = torch.from_numpy(np.stack([1.0 - oriented.data[0], oriented.data[0]]))
        assert np.array_equal(to_input_grid(scores, oriented.record), labels), name
    lps = preprocess([image], PreprocessingPlan(None, NONE))
    assert np.array_equal(lps.data[0], np.flip(nibabel_array, (0, 1)).transpose(2, 1, 0))


def _yucca_volume_wise_znorm(array: np.ndarray) -> np.ndarray:
    """Yucca 2.3.7's `normalizer(array, "volume_wise_znorm")`, step for step, in float64."""
    array = array.astype(np.float64)
    mask = array != array.min()  # "We assume the background is the minimum value"
    array = np.clip(array, None, np.quantile(array[mask], 0.99))
    array = (array - array[mask].mean()) / array[mask].std()
    return (array - array.min()) / (array.max() - array.min())  # skimage rescale_intensity to (0, 1)


def test_volume_znorm_is_yuccas_on_a_real_t1(data_dir):
    raw = sitk.GetArrayFromImage(_t1(data_dir))
    norm = Normalization.from_json(AMAES_NORMALIZATION)
    ours = normalize_channel(raw.astype(np.float32), norm, None)
    expected = _yucca_volume_wise_znorm(raw)
    assert np.abs(ours - expected).max() < 1e-5
    assert ours.min() == 0.0 and abs(float(ours.max()) - 1.0) < 1e-6
    # The crop's non-zero mask plays no part: Yucca's foreground is "above the minimum".
    assert np.array_equal(normalize_channel(raw.astype(np.float32), norm, raw > 100), ours)
    # Without the quantile clip the bright tail would squeeze the brain into a narrower range.
    unclipped = normalize_channel(raw.astype(np.float32), Normalization("volume_znorm", rescale=(0.0, 1.0)), None)
    assert np.abs(unclipped - expected).max() > 0.01
    flat = normalize_channel(np.full((4, 4, 4), 7.0, np.float32), norm, None)
    assert np.array_equal(flat, np.zeros((4, 4, 4), np.float32))  # constant image: no NaN
