"""Batched tiles and mirrored passes (sliding_window.FORWARD_VOXELS) segment exactly as one pass per forward.

A real MR (the brain-lesion scan, 0.78 x 0.78 x 6.5 mm, given an oblique direction) and a real
MedNeXt with random weights of trained scale, small 16x32x32 tiles, TTA on: the default run puts
16 samples into each forward (two tiles with their eight mirrored passes); the reference runs one
sample per forward.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from mednextv2.bundle import Bundle
from mednextv2.inference import sliding_window
from mednextv2.inference.pipeline import Segmenter
from mednextv2.network import MedNeXt, MedNeXtConfig
from segment_fixtures import bundle_spec, one_torch_thread, rotation  # noqa: F401 (autouse)

PATCH = (16, 32, 32)


@pytest.fixture(scope="module")
def oblique_mr(data_dir):
    image = sitk.ReadImage(str(data_dir / "mr-brain-lesion" / "brain1_image.nrrd"))
    image = image[70:150, 60:150, 4:20]  # the brain's middle: anisotropic, 80 x 90 x 16 voxels
    image.SetDirection(tuple(np.asarray(rotation(15, -25, 35)).ravel()))
    return image


@pytest.fixture(scope="module")
def model_bundle(oblique_mr):
    torch.manual_seed(3)
    config = MedNeXtConfig(in_channels=1, n_channels=4, n_classes=3, exp_r=2, kernel_size=3, block_counts=[1] * 9,
                           grn=True, deep_supervision=False)
    model = MedNeXt(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "grn" in name:
                p.normal_(0.0, 0.3)
    spec = bundle_spec(config, patch=PATCH, target_spacing=(6.5, 1.2, 1.2),
                       normalization=[{"scheme": "zscore"}], mirror_axes=(0, 1, 2))
    # Random weights label nearly everything alike; shift the head's biases (a shift of every
    # logit, so of the stitched scores too) until each class holds about a third of the grid.
    seg = Segmenter(Bundle.create(spec, [model.state_dict()]), device="cpu", tta=False)
    scores = seg.predictor.predict(sitk_to_network(seg, oblique_mr)).float().flatten(1)
    with torch.no_grad():
        model.out_0.conv_out.bias[1] += torch.quantile(scores[0] - scores[1], 0.6)
        model.out_0.conv_out.bias[2] += torch.quantile(scores[0] - scores[2], 0.4)
    return Bundle.create(spec, [model.state_dict()])


def sitk_to_network(seg: Segmenter, image: sitk.Image) -> np.ndarray:
    from mednextv2.inference.preprocessing import preprocess

    return preprocess([image], seg.bundle.preprocessing).data


def _segment(image, bundle, monkeypatch, forward_voxels=None, tile_batch=None):
    if forward_voxels is not None:
        monkeypatch.setattr(sliding_window, "FORWARD_VOXELS", forward_voxels)
    seg = Segmenter(bundle, device="cpu", tile_batch=tile_batch)
    model = seg.predictor.models[0]
    batches, scores = [], []
    hook = model.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    predict = seg.predictor.predict

    def predict_and_keep(data, sink):  # the whole grid's scores, finished as the streamed rows would be
        scores.append(predict(data))
        sink.begin(seg.predictor.order_axis(data.shape[1:]))
        sink.add(0, scores[-1])

    seg.predictor.predict = predict_and_keep
    try:
        labels = seg(image)
    finally:
        hook.remove()
        monkeypatch.undo()
    return labels, scores[0].float(), batches


def test_batched_segmentation_gives_the_labels_of_one_pass_per_forward(oblique_mr, model_bundle, monkeypatch):
    batched, batched_scores, batches = _segment(oblique_mr, model_bundle, monkeypatch)
    single, single_scores, single_batches = _segment(oblique_mr, model_bundle, monkeypatch, forward_voxels=1, tile_batch=1)
    assert set(single_batches) == {1}
    assert max(batches) == sliding_window.FORWARD_VOXELS // int(np.prod(PATCH)) == 32  # 4 tiles x 8 mirrored passes
    assert sum(batches) == len(single_batches)  # the same passes, fewer forwards
    for get in ("GetSize", "GetOrigin", "GetSpacing", "GetDirection"):
        assert getattr(batched, get)() == getattr(oblique_mr, get)()
    np.testing.assert_allclose(batched_scores.numpy(), single_scores.numpy(), rtol=0, atol=4e-3)  # float16 rounding
    a, b = sitk.GetArrayFromImage(batched), sitk.GetArrayFromImage(single)
    counts = np.bincount(b.ravel(), minlength=3) / b.size
    assert (counts > 0.1).all(), counts  # a real segmentation with every class, not one class everywhere
    assert np.array_equal(a, b), f"{int((a != b).sum())} voxels labelled differently"
