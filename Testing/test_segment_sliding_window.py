"""Sliding-window predictor: tiling math, padding, batching, mirroring, ensembles, OOM fallback, progress."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from mednextv2.errors import ResourceError
from mednextv2.inference.sliding_window import (FORWARD_VOXELS, RunState, SlidingWindowPredictor, gaussian_importance,
                                                mirror_combinations, next_fallback, pad_to_patch, tile_grid,
                                                tile_starts)
from mednextv2.network import MedNeXt
from segment_fixtures import one_torch_thread, tiny_config  # noqa: F401 (autouse)


class Pointwise(nn.Module):
    """Logits that depend on intensity and position inside the tile (so stitching errors show)."""

    def __init__(self, n_classes=3):
        super().__init__()
        self.n_classes = n_classes
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        c = torch.arange(self.n_classes, dtype=x.dtype).view(1, -1, 1, 1, 1)
        return c * x[:, :1] - c ** 2 * 0.3


class PositionDependent(Pointwise):
    def forward(self, x):
        out = super().forward(x)
        z = torch.linspace(-1, 1, x.shape[2]).view(1, 1, -1, 1, 1)
        return out + z * torch.tensor([0.0, 1.0, -1.0]).view(1, -1, 1, 1, 1)


def test_tile_starts_cover_evenly():
    assert tile_starts(64, 64, 0.5) == [0]
    assert tile_starts(10, 64, 0.5) == [0]
    starts = tile_starts(200, 64, 0.5)
    assert starts[0] == 0 and starts[-1] == 200 - 64
    assert max(np.diff(starts)) <= 32 and len(starts) == 6
    assert len(tile_grid((100, 130, 64), (64, 64, 64), 0.5)) == 3 * 4 * 1


def test_gaussian_map():
    g = gaussian_importance((16, 32, 32))
    assert g.shape == (16, 32, 32) and float(g.max()) == pytest.approx(1.0, abs=1e-3)
    assert float(g.min()) > 0
    assert torch.equal(g, torch.flip(g, (0, 1, 2)))  # symmetric: no bias towards a border


def test_nnunet_map_is_nnunets_filtered_delta():
    """nnU-Net v2 weights tiles with scipy's gaussian_filter of a delta at p//2 (sigma p/8, mode
    constant), scaled to max 10, as float16, zeros raised to the smallest non-zero value."""
    from scipy.ndimage import gaussian_filter

    for patch in ((16, 32, 32), (33, 17, 50)):  # even and odd sizes: the centre is p//2, not (p-1)/2
        delta = np.zeros(patch)
        delta[tuple(p // 2 for p in patch)] = 1
        reference = gaussian_filter(delta, [p / 8 for p in patch], 0, mode="constant", cval=0)
        reference = torch.from_numpy(reference * (10 / reference.max())).half()
        reference[reference == 0] = reference[reference != 0].min()
        assert torch.equal(gaussian_importance(patch, kind="nnunet"), reference.float())
    ours = gaussian_importance((16, 32, 32))
    assert not torch.allclose(ours * 10, gaussian_importance((16, 32, 32), kind="nnunet"), atol=1e-2)
    with pytest.raises(ValueError, match="unknown importance map"):
        gaussian_importance((16, 32, 32), kind="other")


@pytest.mark.parametrize("kind", ["mednextv2", "nnunet"])
def test_overlapping_tiles_are_weighted_by_the_chosen_map(kind):
    model = PositionDependent()  # each tile gives other logits for the same voxel: the weights decide
    x = torch.randn(1, 48, 8, 8)
    got = SlidingWindowPredictor([model], 3, (32, 8, 8), 0.5, (), "cpu", importance_map=kind).predict(x)
    g = gaussian_importance((32, 8, 8), kind=kind).double()
    acc = torch.zeros(3, 48, 8, 8, dtype=torch.float64)
    weight = torch.zeros(48, 8, 8, dtype=torch.float64)
    for start in (0, 16):
        acc[:, start:start + 32] += model(x[None, :, start:start + 32])[0] * g
        weight[start:start + 32] += g
    # the weighted mean to float16 precision, at every voxel (the tiles' far ends have tiny weights)
    torch.testing.assert_close(got.float(), (acc / weight).float(), atol=2.0 ** -11, rtol=2.0 ** -10)
    other = "nnunet" if kind == "mednextv2" else "mednextv2"
    assert not torch.allclose(got.float(), SlidingWindowPredictor([model], 3, (32, 8, 8), 0.5, (), "cpu",
                                                                  importance_map=other).predict(x).float(), atol=2e-2)


@pytest.mark.parametrize("kind", ["mednextv2", "nnunet"])
def test_one_tile_keeps_float16_precision_at_its_border(kind):
    """Alone in the tile, a voxel's mean logit is its logit, rounded as float16 stores it, also
    where the map's weight is tiny (nnU-Net's: down to 6e-8 at a tile's corners)."""
    model = Pointwise()
    x = torch.randn(1, 32, 32, 32, generator=torch.Generator().manual_seed(0)) * 4
    got = SlidingWindowPredictor([model], 3, (32, 32, 32), 0.5, (), "cpu", importance_map=kind).predict(x).float()
    logits = model(x[None])[0]
    torch.testing.assert_close(got, logits, atol=2.0 ** -11, rtol=2.0 ** -10)


def test_pad_to_patch_is_centred_and_undone():
    x = torch.arange(2 * 5 * 40 * 3, dtype=torch.float32).reshape(2, 5, 40, 3)
    padded, crop = pad_to_patch(x, (16, 32, 32))
    assert padded.shape == (2, 16, 40, 32)
    assert torch.equal(padded[(slice(None),) + crop], x)


def test_mirror_combinations():
    assert mirror_combinations([0, 1, 2]) == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert mirror_combinations([]) == [()]


def _logits_of(model, x):
    with torch.no_grad():
        return model(x[None]).float()[0]


def test_pointwise_model_is_reproduced_exactly_small_input_padded():
    """A position-independent model gives its own logits everywhere, also for an input smaller than the patch."""
    x = torch.randn(1, 11, 50, 21)
    model = Pointwise()
    out = SlidingWindowPredictor([model], 3, (16, 32, 32), device="cpu").predict(x)
    assert all(shape[2:] == (16, 32, 32) for shape in model.calls)
    assert out.shape == (3, 11, 50, 21) and out.dtype == torch.float16
    assert torch.allclose(out.float(), _logits_of(model, x), atol=2e-2)


def test_tile_batch_and_mirroring():
    x = torch.randn(1, 24, 40, 36)
    one = SlidingWindowPredictor([PositionDependent()], 3, (16, 32, 32), tile_batch=1, device="cpu").predict(x)
    model = PositionDependent()
    four = SlidingWindowPredictor([model], 3, (16, 32, 32), tile_batch=4, device="cpu").predict(x)
    assert torch.allclose(one.float(), four.float(), atol=2e-2)
    assert max(s[0] for s in model.calls) == 4  # several tiles per forward pass
    # With mirroring along z the whole prediction becomes z-flip equivariant (the tile layout and
    # the Gaussian are symmetric for this size); without it the z-dependent model is not.
    def run(inp, axes):
        return SlidingWindowPredictor([PositionDependent()], 3, (16, 32, 32), mirror_axes=axes, device="cpu").predict(inp).float()

    flipped = torch.flip(x, (1,))
    assert torch.allclose(run(flipped, (0,)), torch.flip(run(x, (0,)), (1,)), atol=2e-2)
    assert not torch.allclose(run(flipped, ()), torch.flip(run(x, ()), (1,)), atol=1e-2)


def test_ensemble_averages_logits():
    x = torch.randn(1, 16, 32, 32)

    class Scaled(Pointwise):
        def __init__(self, k):
            super().__init__()
            self.k = k

        def forward(self, x):
            return super().forward(x) * self.k

    a, b = Scaled(1.0), Scaled(3.0)
    out = SlidingWindowPredictor([a, b], 3, (16, 32, 32), device="cpu").predict(x)
    expected = (_logits_of(a, x) + _logits_of(b, x)) / 2
    assert torch.allclose(out.float(), expected, atol=2e-2)


def test_oom_halves_the_tile_batch_and_logs(caplog):
    class OomAboveOne(Pointwise):
        def forward(self, x):
            if x.shape[0] > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
            return super().forward(x)

    x = torch.randn(1, 30, 40, 40)
    with caplog.at_level(logging.WARNING, "mednextv2.inference.sliding_window"):
        out = SlidingWindowPredictor([OomAboveOne()], 3, (16, 32, 32), tile_batch=4, device="cpu").predict(x)
    assert "halving the tile batch 4 -> 2" in caplog.text and "2 -> 1" in caplog.text
    assert torch.allclose(out.float(), _logits_of(Pointwise(), x), atol=2e-2)


def test_oom_everywhere_is_a_resource_error():
    class AlwaysOom(Pointwise):
        def forward(self, x):
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate; out of memory")

    with pytest.raises(ResourceError, match="out of memory"):
        SlidingWindowPredictor([AlwaysOom()], 3, (16, 32, 32), tile_batch=2, device="cpu").predict(torch.randn(1, 16, 32, 32))

    class HugeAllocation(Pointwise):  # the CPU allocator's own failure ("can't allocate memory")
        def forward(self, x):
            return torch.empty(10**13, dtype=torch.uint8)

    with pytest.raises(ResourceError, match="out of memory"):
        SlidingWindowPredictor([HugeAllocation()], 3, (16, 32, 32), device="cpu").predict(torch.randn(1, 16, 32, 32))


def test_fallback_chain_order():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    state = RunState(cuda, cuda, 4)
    chain = []
    while state is not None:
        chain.append((state.compute.type, state.accumulate.type, state.tile_batch, state.batch_mirrors))
        state = next_fallback(state)
    assert chain == [("cuda", "cuda", 4, True), ("cuda", "cuda", 2, True), ("cuda", "cuda", 1, True),
                     ("cuda", "cuda", 1, False), ("cuda", "cpu", 1, False), ("cpu", "cpu", 1, False)]


def test_small_tiles_share_forwards_with_their_mirrored_passes():
    """On the CPU small tiles and their mirrored copies fill forwards up to FORWARD_VOXELS; the
    result is that of one pass per forward (the model here is per sample, so exactly)."""
    x = torch.randn(1, 24, 40, 36)
    patch = (16, 32, 32)
    batched_model, single_model = PositionDependent(), PositionDependent()
    batched = SlidingWindowPredictor([batched_model], 3, patch, mirror_axes=(0, 1, 2), device="cpu")
    assert batched.tile_batch == FORWARD_VOXELS // (16 * 32 * 32 * 8) == 4
    out = batched.predict(x)
    single = SlidingWindowPredictor([single_model], 3, patch, mirror_axes=(0, 1, 2), tile_batch=1, device="cpu")
    expected = single._run(x.float(), RunState(single.device, single.device, 1, batch_mirrors=False))
    assert {s[0] for s in batched_model.calls} == {32} and {s[0] for s in single_model.calls} == {1}
    assert torch.equal(out, expected)
    # Large tiles keep one tile and one pass per forward on the CPU.
    assert SlidingWindowPredictor([Pointwise()], 3, (64, 64, 64), mirror_axes=(0, 1, 2), device="cpu").tile_batch == 1


def test_progress_reports_tiles_and_eta():
    reports = []
    x = torch.randn(1, 30, 50, 40)
    SlidingWindowPredictor([Pointwise()], 3, (16, 32, 32), tile_batch=2, device="cpu",
                           progress=lambda *a, **k: reports.append((a, k))).predict(x)
    total = len(tile_grid((30, 50, 40), (16, 32, 32), 0.5))
    assert [k["tiles_done"] for _, k in reports] == list(range(2, total + 1, 2)) + ([total] if total % 2 else [])
    assert reports[-1][0][1] == 1.0 and reports[-1][1]["eta_s"] == 0
    assert all(k["eta_s"] is not None and k["eta_s"] >= 0 for _, k in reports)


def test_each_fold_mirrors_on_its_own_axes_then_folds_are_averaged():
    """nnU-Net's ensemble: each fold's mean over its own mirrored passes, then the mean over folds."""
    torch.manual_seed(0)
    folds = [MedNeXt(tiny_config(n_classes=3)).eval() for _ in range(2)]
    x = torch.randn(1, 16, 32, 32)  # one tile: the output is the tile's logits (float16)

    def fold_mean(model, axes):
        passes = [torch.flip(_logits_of(model, torch.flip(x, [a + 1 for a in c])), [a + 1 for a in c])
                  for c in mirror_combinations(axes)]
        return torch.stack(passes).mean(0)

    def predict(axes):
        return SlidingWindowPredictor(folds, 3, (16, 32, 32), mirror_axes=axes, device="cpu", amp=False).predict(x).float()

    per_fold = [(0,), (1, 2)]  # 2 and 4 passes
    expected = (fold_mean(folds[0], (0,)) + fold_mean(folds[1], (1, 2))) / 2
    out = predict(per_fold)
    assert torch.allclose(out, expected, atol=2e-3)
    pooled = (2 * fold_mean(folds[0], (0,)) + 4 * fold_mean(folds[1], (1, 2))) / 6  # all 6 passes alike
    assert (out - pooled).abs().max() > 50 * (out - expected).abs().max()
    # equal axes per fold give exactly the single-list result
    assert torch.equal(predict([(0, 2), (0, 2)]), predict((0, 2)))
    with pytest.raises(ValueError, match="one per model"):
        predict([(0,)])


def test_stitching_keeps_its_float32_temporaries_small():
    """Many classes: stitching must not convert whole slabs of every class of the float16
    accumulator to float32 at once (a final division did: 0.9 GB beside a 1.1 GB accumulator, 44 classes)."""
    from torch.profiler import ProfilerActivity, profile

    k, shape = 44, (24, 200, 200)
    accumulator = 2 * k * int(np.prod(shape))
    model = Pointwise(n_classes=k)
    predictor = SlidingWindowPredictor([model], k, (16, 64, 64), step=1.0, device="cpu")
    x = torch.randn((1,) + shape)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = predictor.predict(x)
    sizes = sorted(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0)
    assert accumulator in sizes
    largest_other = max(s for s in sizes if s != accumulator)
    tile_output = 4 * k * 16 * 64 * 64 * predictor.tile_batch  # the forward's own output
    assert largest_other <= max(16 << 20, tile_output) * 1.05, f"{largest_other / 2**20:.0f} MiB allocated at once"
    assert torch.allclose(out.float(), _logits_of(Pointwise(n_classes=k), x), rtol=5e-3, atol=2e-2)  # float16 sums of tiny-weight products
