"""Streamed stitching: finished rows go to the finisher while tiles still run, and nothing changes.

The predictor runs tiles in order along one axis and hands each run of rows that no later tile
touches to `finishing.LabelFinisher`; these tests hold it to the whole-volume result bit for bit
(scores and labels), on uneven overlaps, padding, resampling, nearest axes, softmax-first plans,
crops and orientations, on the real lung CT, and check that only a window of the accumulator exists.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from mednextv2.bundle import Bundle
from mednextv2.inference.finishing import LabelFinisher, to_input_grid
from mednextv2.inference.pipeline import Segmenter
from mednextv2.inference.preprocessing import GridRecord, preprocess
from mednextv2.inference.sliding_window import SlidingWindowPredictor, plan_tiles
from mednextv2.inference.tiles import stream_axis, tile_grid
from mednextv2.network import MedNeXt
from segment_fixtures import bundle_spec, one_torch_thread, tiny_config  # noqa: F401 (autouse)


class ConvNet(nn.Module):
    """Random 3x3x3 convolution plus a position term: each tile gives other logits for a voxel."""

    def __init__(self, n_classes=5, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv3d(1, n_classes, 3, padding=1)

    def forward(self, x):
        z = torch.linspace(-1, 1, x.shape[2]).view(1, 1, -1, 1, 1)
        y = torch.linspace(-1, 1, x.shape[3]).view(1, 1, 1, -1, 1)
        k = torch.arange(self.conv.out_channels, dtype=x.dtype).view(1, -1, 1, 1, 1)
        return 3 * self.conv(x) + z * (k - 2) + y * (k % 2)


class Runs:
    """A sink that keeps every run of rows it is given."""

    def begin(self, axis):
        self.axis, self.runs = axis, []

    def add(self, start, scores):
        self.runs.append((start, scores.clone()))


# (network grid, patch): uneven strides, an axis shorter than the patch (padded), ties between axes
GRIDS = [((20, 70, 45), (8, 16, 16)), ((9, 33, 60), (8, 16, 16)), ((12, 40, 40), (16, 16, 16)),
         ((30, 20, 70), (16, 16, 16)), ((41, 18, 18), (16, 16, 16))]


@pytest.mark.parametrize("grid, patch", GRIDS)
def test_streamed_rows_are_the_whole_volume_scores(grid, patch):
    x = torch.randn((1,) + grid)
    predictor = SlidingWindowPredictor([ConvNet()], 5, patch, 0.5, (0, 2), "cpu", importance_map="nnunet")
    whole = predictor.predict(x)
    runs = Runs()
    assert predictor.predict(x, sink=runs) is None
    padded = [max(n, p) for n, p in zip(grid, patch)]
    assert runs.axis == stream_axis(padded, patch, 0.5) == predictor.order_axis(grid)
    starts = [s for s, _ in runs.runs]
    assert len(runs.runs) > 2 and starts == sorted(starts) and starts[0] == 0
    assert torch.equal(torch.cat([r for _, r in runs.runs], 1 + runs.axis), whole)


def _record(grid, out_shape, nearest, softmax_first=False, bbox=None, orientation=((0, 1, 2), (False,) * 3)):
    bbox = bbox or tuple((0, n) for n in out_shape)
    permutation, flips = orientation
    oriented = tuple(max(b, b + 2 * (a > 0)) for a, b in bbox)  # room around a crop
    input_shape = tuple(oriented[permutation.index(a)] for a in range(3))
    return GridRecord(input_shape, permutation, flips, (1.0,) * 3, bbox, (1.0,) * 3, grid, nearest, softmax_first)


RECORDS = {
    "same grid": lambda g: _record(g, g, None),
    "upsampled": lambda g: _record(g, (g[0] + 11, g[1] * 2 - 3, g[2] + 17), None),
    "downsampled, nearest z, softmax first": lambda g: _record(g, (g[0] - 3, g[1] - 7, g[2] // 2 + 1), 0, True),
    "nearest y, cropped": lambda g: _record(g, (g[0] + 2, g[1] + 9, g[2] * 2), 1, False,
                                            ((2, g[0] + 4), (5, g[1] + 14), (0, g[2] * 2))),
    "nearest x, softmax first, cropped, permuted and flipped": lambda g: _record(
        g, (g[0], g[1] + 30, g[2] + 5), 2, True, ((1, g[0] + 1), (0, g[1] + 30), (3, g[2] + 8)),
        ((2, 0, 1), (True, False, True))),
}


@pytest.mark.parametrize("grid, patch", GRIDS[:2] + GRIDS[3:4])
@pytest.mark.parametrize("name", RECORDS)
def test_streamed_labels_equal_the_whole_volume_labels(grid, patch, name):
    record = RECORDS[name](grid)
    x = torch.randn((1,) + grid)
    predictor = SlidingWindowPredictor([ConvNet()], 5, patch, 0.5, (), "cpu", importance_map="nnunet")
    whole = to_input_grid(predictor.predict(x), record, predictor.order_axis(grid))
    finisher = LabelFinisher(record, 5)
    predictor.predict(x, sink=finisher)
    streamed = finisher.result()
    assert streamed.shape == record.input_shape
    assert np.array_equal(streamed, whole)
    assert len(np.unique(whole)) >= 4  # the comparison can fail


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("name", RECORDS)
def test_finisher_labels_do_not_depend_on_how_rows_arrive(axis, name):
    grid = (13, 21, 17)
    record = RECORDS[name](grid)
    scores = (4 * torch.randn((6,) + grid)).half()
    whole = LabelFinisher(record, 6).finish_whole(scores, axis)
    rng = np.random.default_rng(axis)
    for slab_bytes in (1, 6 * 4 * 40 * 40 * 3, 1 << 30):  # one output row per slab, a few, all
        runs = LabelFinisher(record, 6, slab_bytes=slab_bytes)
        runs.begin(axis)
        start = 0
        while start < grid[axis]:
            n = int(rng.integers(1, 6))
            part = scores.narrow(1 + axis, start, min(n, grid[axis] - start)).clone()
            runs.add(start, part)
            part.fill_(float("nan"))  # the caller reuses its memory: nothing kept may alias it
            start += n
        assert np.array_equal(runs.result(), whole)
    assert np.array_equal(LabelFinisher(record, 6).finish_whole(scores, 0), to_input_grid(scores, record))
    with pytest.raises(ValueError, match="in order"):
        finisher = LabelFinisher(record, 6)
        finisher.begin(axis)
        finisher.add(1, scores.narrow(1 + axis, 1, 2))


def test_finisher_refuses_a_result_before_every_row_arrived():
    record = _record((8, 8, 8), (8, 8, 8), None)
    finisher = LabelFinisher(record, 3)
    finisher.begin(1)
    finisher.add(0, torch.zeros(3, 8, 5, 8))
    with pytest.raises(RuntimeError, match="before every row"):
        finisher.result()


def test_real_ct_segments_streamed_as_the_whole_volume(data_dir):
    """The lung CT (512x512x48), a small MedNeXt with 4 classes: the pipeline's streamed labels are
    those of the whole grid's scores finished along the same axis, and the rows went in runs."""
    torch.manual_seed(3)
    config = tiny_config(n_classes=4)
    model = MedNeXt(config)
    with torch.no_grad():
        model.out_0.conv_out.bias.copy_(torch.tensor([0.0, 0.3, -0.2, 0.1]))
    spec = bundle_spec(config, patch=(16, 32, 32), target_spacing=(5.0, 3.0, 3.0), mirror_axes=(0,),
                       normalization=[{"scheme": "ct", "clip": [-1000.0, 500.0], "mean": -300.0, "std": 400.0}])
    segmenter = Segmenter(Bundle.create(spec, [model.state_dict()]), device="cpu")
    image = sitk.ReadImage(str(data_dir / "ct-lung" / "lung1_image.nrrd"))
    runs = []
    add = LabelFinisher.add

    def counted(self, start, scores):
        runs.append((start, tuple(scores.shape)))
        add(self, start, scores)

    LabelFinisher.add = counted
    try:
        streamed = sitk.GetArrayFromImage(segmenter(image))
    finally:
        LabelFinisher.add = add
    pre = preprocess([image], segmenter.bundle.preprocessing)
    assert pre.record.network_shape == (48, 97, 97)
    axis = segmenter.predictor.order_axis(pre.record.network_shape)
    whole = to_input_grid(segmenter.predictor.predict(pre.data), pre.record, axis)
    assert axis == 1 and len(runs) >= 4
    assert np.array_equal(streamed, whole)
    counts = np.bincount(whole.ravel(), minlength=4)
    assert (counts > 0.01 * whole.size).sum() >= 2  # the labels follow the image: the comparison can fail


def test_only_a_window_of_the_accumulator_exists_when_streamed():
    """44 classes: streamed, no allocation comes near the whole grid's float16 scores; the plan's
    host memory says so too."""
    from torch.profiler import ProfilerActivity, profile

    k, grid, patch = 44, (24, 200, 200), (16, 64, 64)
    whole_bytes = 2 * k * int(np.prod(grid))
    predictor = SlidingWindowPredictor([ConvNet(k)], k, patch, 0.5, (), "cpu", tile_batch=1)
    finisher = LabelFinisher(_record(grid, grid, None), k)
    x = torch.randn((1,) + grid)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        predictor.predict(x, sink=finisher)
    largest = max(e.cpu_memory_usage for e in prof.events())
    window = 2 * k * 24 * 64 * 200  # patch rows along y (stream axis), the whole grid across
    assert window in {e.cpu_memory_usage for e in prof.events()}
    assert largest < 0.4 * whole_bytes, f"{largest / 2**20:.0f} MiB allocated at once"
    streamed = plan_tiles(grid, patch, 0.5, k, True, streamed=True)
    assert streamed.host_bytes < 0.4 * plan_tiles(grid, patch, 0.5, k, True).host_bytes
    assert streamed.n_tiles == len(tile_grid(grid, patch, 0.5, major=1))
    assert np.array_equal(finisher.result(), to_input_grid(predictor.predict(x), finisher.record, 1))


def test_a_gpu_keeps_the_streamed_window_where_the_whole_grid_would_not_fit(monkeypatch):
    k, grid, patch = 44, (24, 200, 200), (16, 64, 64)
    predictor = SlidingWindowPredictor([ConvNet(k)], k, patch, 0.5, (), "cpu")
    predictor.device = torch.device("cuda")
    whole = (2 * k + 4 + 4) * int(np.prod(grid))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (whole, 2 * whole))  # half of it may be used
    x = torch.zeros((1,) + grid)
    assert predictor._initial_accumulation_device(x, streamed=True).type == "cuda"
    assert predictor._initial_accumulation_device(x, streamed=False).type == "cpu"
