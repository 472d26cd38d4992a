"""Python API: mednextv2.segment(), Segmenter, batch mode, options, catalog ids, resource errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import mednextv2
from mednextv2.bundle import Bundle
from mednextv2.cli import main
from mednextv2.errors import InputError
from mednextv2.inference.pipeline import Segmenter, find_cases, segment_folder
from segment_fixtures import (bundle_spec, make_image, one_torch_thread, threshold_bundle,  # noqa: F401
                              threshold_state_dict, tiny_config)


def _two_blobs():
    arr = np.zeros((14, 40, 40), np.int16)
    arr[3:11, 5:20, 5:20] = 1000   # big, label 2 (> 800)
    arr[5:8, 28:33, 28:33] = 1000  # small, label 2, a second component
    arr[3:11, 24:36, 5:15] = 500   # label 1
    return make_image(arr, spacing=(1.0, 1.0, 2.0))


def test_segment_returns_labelmap_on_the_input_grid(tmp_path):
    image = _two_blobs()
    path = tmp_path / "in.nii.gz"
    sitk.WriteImage(image, str(path))
    bundle = threshold_bundle((300.0, 800.0), target_spacing=None, mirror_axes=())
    for source in (image, path, str(path)):
        out = mednextv2.segment(source, bundle, device="cpu")
        assert out.GetPixelID() == sitk.sitkUInt8 and out.GetSize() == image.GetSize()
        np.testing.assert_allclose(out.GetOrigin(), image.GetOrigin(), atol=1e-6)
        # target spacing None = no resampling: the threshold is exact everywhere
        assert np.array_equal(sitk.GetArrayFromImage(out), np.digitize(sitk.GetArrayFromImage(image), [300, 800]))


def test_segment_is_a_plain_function_after_the_pipeline_module_is_imported():
    import inspect

    import mednextv2.inference.pipeline

    # The package attribute is the function, not a module that forwards calls.
    assert inspect.isfunction(mednextv2.segment)
    assert mednextv2.segment is mednextv2.inference.pipeline.segment
    from mednextv2 import segment
    assert segment is mednextv2.inference.pipeline.segment


def test_segment_leaves_the_callers_torch_thread_count_alone():
    """The engine sets torch's process-wide thread count only while it runs: a Python caller's is theirs again."""
    import torch

    image = _two_blobs()
    bundle = threshold_bundle((300.0, 800.0), target_spacing=None, mirror_axes=())
    interop = torch.get_num_interop_threads()
    during = []
    assert torch.get_num_threads() == 1  # one_torch_thread
    mednextv2.segment(image, bundle, device="cpu", threads=2,
                      progress=lambda stage, *args, **kwargs: during.append(torch.get_num_threads()))
    assert 2 in during  # the engine's count was in force while tiles ran
    assert torch.get_num_threads() == 1 and torch.get_num_interop_threads() == interop


def test_structures_subset_and_largest_component():
    image = _two_blobs()
    bundle = threshold_bundle((300.0, 800.0), target_spacing=None, mirror_axes=(), names=["soft", "dense"])
    arr = sitk.GetArrayFromImage(image)
    only = sitk.GetArrayFromImage(mednextv2.segment(image, bundle, device="cpu", structures=["dense"]))
    assert set(np.unique(only)) == {0, 2} and np.array_equal(only == 2, arr > 800)
    largest = sitk.GetArrayFromImage(mednextv2.segment(image, bundle, device="cpu", largest_component=True))
    assert (largest == 2).sum() == 8 * 15 * 15 and largest[6, 30, 30] == 0
    assert np.array_equal(largest == 1, (arr > 300) & (arr <= 800))
    with pytest.raises(InputError, match="unknown structure.*soft, dense"):
        mednextv2.segment(image, bundle, structures=["liver"])


def test_multichannel_model_and_channel_checks(tmp_path):
    cfg = tiny_config(in_channels=2)
    spec = bundle_spec(cfg, target_spacing=None, mirror_axes=())
    bundle = Bundle.create(spec, [threshold_state_dict(cfg, [3.0])])  # uses channel 0 only
    a, b = _two_blobs(), _two_blobs()
    out = mednextv2.segment([a, b], bundle, device="cpu")
    assert np.array_equal(sitk.GetArrayFromImage(out), (sitk.GetArrayFromImage(a) > 300).astype(np.uint8))
    with pytest.raises(InputError, match="takes 2 input channel"):
        mednextv2.segment(a, bundle)
    shifted = _two_blobs()
    shifted.SetOrigin((5.0, 0.0, 0.0))
    with pytest.raises(InputError, match="not on the grid"):
        mednextv2.segment([a, shifted], bundle)


def test_batch_mode_loads_the_model_once(tmp_path, monkeypatch):
    cases = tmp_path / "cases"
    cases.mkdir()
    for name in ("a.nii.gz", "b.nrrd", "c.mha"):
        sitk.WriteImage(_two_blobs(), str(cases / name))
    (cases / "notes.txt").write_text("ignored")
    calls = []
    original = Bundle.build_models
    monkeypatch.setattr(Bundle, "build_models", lambda self, device="cpu": calls.append(1) or original(self, device))
    out = tmp_path / "out"
    out.mkdir()
    written = segment_folder(cases, threshold_bundle(mirror_axes=()), out, ".nii.gz", device="cpu")
    assert [p.name for p in written] == ["a.nii.gz", "b.nii.gz", "c.nii.gz"] and len(calls) == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["a.nii.gz", "b.nii.gz", "c.nii.gz", "a.labels.json", "b.labels.json", "c.labels.json", ".mednextv2-run"])
    assert sorted(p.name for p in (out / ".mednextv2-run").iterdir()) == ["a.json", "b.json", "c.json"]


def test_find_cases_groups_channels(tmp_path):
    for name in ("p1_0000.nii.gz", "p1_0001.nii.gz", "p2_0000.nii.gz", "p2_0001.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    assert {k: [p.name for p in v] for k, v in find_cases(tmp_path, 2).items()} == {
        "p1": ["p1_0000.nii.gz", "p1_0001.nii.gz"], "p2": ["p2_0000.nii.gz", "p2_0001.nii.gz"]}
    (tmp_path / "p3_0000.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="case p3"):
        find_cases(tmp_path, 2)


def test_catalog_id_is_resolved_through_the_catalog(tmp_path, monkeypatch):
    path = threshold_bundle(mirror_axes=()).save(tmp_path / "bundle")
    monkeypatch.setenv("MEDNEXTV2_HOME", str(tmp_path / "home"))
    assert main(["models", "import", str(path), "--id", "known-threshold"]) == 0
    segmenter = Segmenter("known-threshold", device="cpu")
    assert segmenter.bundle.id == "known-threshold"
    assert (tmp_path / "home") in Path(segmenter.bundle.source).parents
    with pytest.raises(InputError, match="unknown model 'no-such-model'"):
        Segmenter("no-such-model", device="cpu")


def test_out_of_memory_is_exit_3_and_writes_nothing(tmp_path, monkeypatch, capsys):
    image = tmp_path / "in.nrrd"
    sitk.WriteImage(_two_blobs(), str(image))
    model = threshold_bundle(mirror_axes=()).save(tmp_path / "m")
    out = tmp_path / "out"
    out.mkdir()

    def no_memory(self, data, sink=None):
        raise MemoryError()

    monkeypatch.setattr("mednextv2.inference.sliding_window.SlidingWindowPredictor.predict", no_memory)
    rc = main(["segment", str(image), "-m", str(model), "-o", str(out / "r.seg.nrrd"), "--progress", "none"])
    assert rc == 3 and "out of memory" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_small_image_is_padded_not_refused():
    arr = np.zeros((5, 9, 7), np.int16)
    arr[1:4, 2:7, 2:5] = 1000
    image = make_image(arr, spacing=(1.0, 1.0, 1.0))
    out = mednextv2.segment(image, threshold_bundle(target_spacing=None, patch=(32, 64, 64)), device="cpu")
    assert np.array_equal(sitk.GetArrayFromImage(out), (arr > 300).astype(np.uint8))


def test_fast_mode_uses_a_coarser_grid_without_tta_and_returns_the_input_grid():
    image = _two_blobs()  # (z, y, x) spacing (2, 1, 1)
    bundle = threshold_bundle((300.0, 800.0), target_spacing=(2.0, 1.0, 1.0), mirror_axes=(0, 1, 2))
    messages = []
    segmenter = Segmenter(bundle, device="cpu", fast=True, progress=lambda s, f, m="", **k: messages.append((s, m)))
    assert segmenter.predictor.mirrors == [[()]]
    out = segmenter(image)
    assert ("preprocess", "network grid (7, 20, 20)") in messages
    assert out.GetSize() == image.GetSize() and out.GetSpacing() == image.GetSpacing()
    arr = sitk.GetArrayFromImage(image)
    # the big blocks survive the coarse grid; the result is not the exact threshold anymore
    assert (sitk.GetArrayFromImage(out) == np.digitize(arr, [300, 800])).mean() > 0.9
