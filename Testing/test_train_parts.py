"""The training stages one by one: planning, cache, sampling, augmentation, loss, schedule,
checkpoints on a full disk, NaN handling, fine-tuning head mapping. Real data: the breast MR
case (anisotropic, 143 lesion voxels) and the lung CT (Hounsfield units)."""
from __future__ import annotations

import errno
import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from mednextv2.bundle import Bundle, Normalization, load_bundle
from mednextv2.errors import ResourceError
from mednextv2.network import MedNeXt, MedNeXtConfig
from mednextv2.train import TrainOptions, checkpoint, run_training
from mednextv2.train.augment import NO_AUGMENTATION, AugmentConfig, augment
from mednextv2.train.checks import validate_dataset
from mednextv2.train.datasets import discover_dataset
from mednextv2.train.finetune import init_from_base
from mednextv2.train.fingerprint import make_fingerprint
from mednextv2.train.loop import TrainingDiverged
from mednextv2.train.loss import DiceCELoss, deep_supervision_weights
from mednextv2.train.optim import lr_factor
from mednextv2.train.planning import fit_patch, map_labels, plan_from_base, plan_from_scratch
from mednextv2.train.preprocessed import build_cache
from mednextv2.train.sampler import PatchSampler


@pytest.fixture(scope="module")
def breast_dataset(data_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("breast")
    for name in ("b1", "b2"):
        for kind in ("image", "label"):
            sitk.WriteImage(sitk.ReadImage(str(data_dir / "mr-breast" / f"breast1_{kind}.nrrd")),
                            str(folder / f"{name}_{kind}.nrrd"))
    return folder


@pytest.fixture(scope="module")
def breast_cache(breast_dataset, tmp_path_factory):
    data = validate_dataset(discover_dataset(breast_dataset))
    fp = make_fingerprint(data)
    plan = plan_from_scratch(fp, data.labels, (), "v2-tiny", "cpu", patch=(16, 32, 32))
    return plan, build_cache(data.dataset.cases, plan, tmp_path_factory.mktemp("cache"))


def test_planning_follows_the_fingerprint(breast_cache, data_dir, tmp_path):
    plan, cached = breast_cache
    # breast: 0.66 x 0.66 x 2.1 mm, nearest-LPS array order puts the 2.1 mm slices on axis 0
    assert plan.target_spacing == pytest.approx((2.1, 0.664, 0.664), abs=0.01)
    assert plan.normalization == ({"scheme": "zscore"},) and plan.channels[0]["modality"] == "MR"
    assert cached[0].shape == (21, 120, 45) and cached[0].classes == (1,)
    # CT is recognised from Hounsfield units and gets the foreground clip/mean/std normalization.
    for kind in ("image", "label"):
        sitk.WriteImage(sitk.ReadImage(str(data_dir / "ct-lung" / f"lung1_{kind}.nrrd")), str(tmp_path / f"l_{kind}.nrrd"))
    ct = validate_dataset(discover_dataset(tmp_path))
    ct_plan = plan_from_scratch(make_fingerprint(ct), ct.labels, (), "v2-tiny", "cpu")
    norm = ct_plan.normalization[0]
    assert norm["scheme"] == "ct" and norm["clip"][0] < norm["mean"] < norm["clip"][1]
    assert ct_plan.channels[0]["modality"] == "CT"
    assert ct_plan.target_spacing[0] == pytest.approx(5.0)
    # Training preprocesses with the plan inference will read from the bundle (one parser for both).
    pre = ct_plan.preprocessing_plan()
    assert pre.normalization == (Normalization("ct", tuple(norm["clip"]), norm["mean"], norm["std"]),)
    assert pre.target_spacing == tuple(ct_plan.target_spacing) and pre.orientation == ct_plan.orientation
    # CPU: at most 32^3 voxels, which learned most per CPU minute (bench_train --curve)
    assert int(np.prod(ct_plan.patch_size)) <= 32 ** 3 and all(p % 16 == 0 for p in ct_plan.patch_size)


def test_fit_patch_shrinks_the_longest_physical_axis_first():
    assert fit_patch((200, 200, 200), (1, 1, 1), 64 ** 3) == (64, 64, 64)
    # thick slices: 16 x 5 mm = 80 mm against 128 x 0.8 mm = 102 mm, the most isotropic fit in mm
    assert fit_patch((40, 300, 300), (5, 0.8, 0.8), 64 ** 3) == (16, 128, 128)
    assert fit_patch((10, 20, 30), (1, 1, 1), 64 ** 3) == (16, 32, 32)


def test_foreground_oversampling_finds_a_tiny_lesion(breast_cache):
    plan, cached = breast_cache
    sampler = PatchSampler(cached, plan.patch_size, batch_size=3, seed=1)
    hits = [bool((label > 0).any()) for _ in range(40) for label in sampler.sample().label]
    # 143 lesion voxels of 113,400: random patches almost never contain one; 1 of 3 is forced.
    assert np.mean(hits) >= 0.3
    batch = sampler.sample()
    assert batch.image.shape == (3, 1, *sampler.context) and batch.label.shape == (3, 1, *sampler.context)


def test_identity_augmentation_is_an_exact_centre_crop_and_mirroring_keeps_labels_aligned():
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(4, 1, 22, 42, 42)
    label = (image > 0.5).long()
    patch = (16, 32, 32)
    out_img, out_lab = augment(image, label, patch, NO_AUGMENTATION, gen)
    centre = (slice(None), slice(None), slice(3, 19), slice(5, 37), slice(5, 37))
    # exact grid positions: only float rounding in the sampling coordinates remains
    assert torch.allclose(out_img, image[centre], atol=1e-5) and torch.equal(out_lab, label[centre])
    mirror = AugmentConfig(**{**NO_AUGMENTATION.__dict__, "mirror_axes": (0, 1, 2)})
    out_img, out_lab = augment(image, label, patch, mirror, gen)
    flipped = 0
    for b in range(4):
        matches = [axes for axes in [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
                   if torch.allclose(out_img[b], torch.flip(image[centre][b], [a - 1 for a in axes]), atol=1e-5)]
        assert len(matches) == 1
        axes = [a - 1 for a in matches[0]]
        assert torch.equal(out_lab[b], torch.flip(label[centre][b], axes) if axes else label[centre][b])
        flipped += bool(axes)
    assert flipped >= 1


def test_full_augmentation_keeps_shapes_labels_and_finite_values():
    gen = torch.Generator().manual_seed(3)
    image = torch.randn(8, 2, 40, 40, 40)
    label = torch.randint(0, 3, (8, 1, 40, 40, 40))
    cfg = AugmentConfig(p_rotation=1, p_scaling=1, p_elastic=1, p_noise=1, p_blur=1, p_brightness=1,
                        p_contrast=1, p_lowres=1, p_gamma_inverted=0.5, p_gamma=1)
    out_img, out_lab = augment(image, label, (32, 32, 32), cfg, gen)
    assert out_img.shape == (8, 2, 32, 32, 32) and out_lab.shape == (8, 1, 32, 32, 32)
    assert bool(torch.isfinite(out_img).all()) and set(out_lab.unique().tolist()) <= {0, 1, 2}
    assert not torch.equal(out_img, image[:, :, 4:36, 4:36, 4:36])


def test_loss_weights_and_behaviour():
    assert deep_supervision_weights(5) == pytest.approx([16 / 31, 8 / 31, 4 / 31, 2 / 31, 1 / 31])
    target = torch.randint(0, 3, (2, 1, 16, 16, 16))
    perfect = [torch.nn.functional.one_hot(torch.nn.functional.interpolate(target.float(), scale_factor=1 / 2 ** i).long()[:, 0], 3)
               .permute(0, 4, 1, 2, 3).float() * 20 for i in range(3)]
    wrong = [p.roll(1, dims=1) for p in perfect]
    loss = DiceCELoss()
    assert float(loss(perfect, target)) < 0.01 < 1.0 < float(loss(wrong, target))


def test_learning_rate_warms_up_then_decays():
    assert lr_factor(0.0) == pytest.approx(0.01)
    assert lr_factor(0.025) == pytest.approx(0.5)
    assert lr_factor(0.05) == pytest.approx(1.0)
    assert lr_factor(0.5) > lr_factor(0.9) > lr_factor(1.0) == 0.0


def test_full_disk_never_damages_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / checkpoint.LATEST
    checkpoint.save_atomic({"epoch": torch.tensor(1)}, path)

    def full_disk(obj, f):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(ResourceError, match="disk full.*previous checkpoint is unchanged"):
        checkpoint.save_atomic({"epoch": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert int(checkpoint.load(path)["epoch"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.LATEST]


def test_label_mapping_reuses_base_head_rows():
    base_labels = [{"value": 1, "name": "Liver", "color": [1, 2, 3]}, {"value": 2, "name": "white_matter", "color": [4, 5, 6]}]
    specs = map_labels({1: "white matter", 2: "lesion"}, base_labels)
    assert [(s.name, s.base_row, s.color) for s in specs][0] == ("white matter", 2, (4, 5, 6))
    assert specs[1].base_row is None
    base = MedNeXt(MedNeXtConfig.preset("v2-tiny", n_classes=3))
    model = MedNeXt(MedNeXtConfig.preset("v2-tiny", n_classes=3))
    init_from_base(model, base.state_dict(), specs, base_classes=3)
    w_new, w_base = model.out_0.conv_out.weight, base.out_0.conv_out.weight  # (C, classes, 1, 1, 1)
    assert torch.equal(w_new[:, 0], w_base[:, 0]) and torch.equal(w_new[:, 1], w_base[:, 2])
    assert not torch.equal(w_new[:, 2], w_base[:, 1])
    assert torch.equal(model.stem.weight, base.stem.weight)


def test_new_labels_get_the_bundles_default_colours():
    """One palette (bundle_spec.default_color) for trained and imported models: 12 labels, 12 colours."""
    from mednextv2.bundle_spec import PALETTE, default_color
    specs = map_labels({v: f"structure {v}" for v in range(1, 13)})
    assert [s.color for s in specs] == [default_color(v) for v in range(1, 13)] == list(PALETTE[:12])
    assert len({s.color for s in specs}) == 12
    assert default_color(len(PALETTE) + 1) == PALETTE[0]


def test_finetune_keeps_the_base_plan_and_runs(breast_dataset, tmp_path):
    cfg = MedNeXtConfig.preset("v2-tiny", n_classes=2, deep_supervision=False)
    spec = {"id": "base-ct", "title": "base", "network": cfg.to_dict(),
            "labels": [{"value": 1, "name": "lesion", "color": [200, 0, 0]}],
            "channels": [{"name": "CT", "modality": "CT"}],
            "preprocessing": {"target_spacing": [2.0, 1.0, 1.0], "crop_to_nonzero": False,
                              "normalization": [{"scheme": "ct", "clip": [-100.0, 300.0], "mean": 50.0, "std": 80.0}]},
            "inference": {"patch_size": [16, 32, 32], "mirror_axes": [1, 2]}}
    base_model = MedNeXt(cfg)
    base = Bundle.create(spec, [base_model.state_dict()])
    base.save(tmp_path / "base")
    plan = plan_from_base(base.spec, {1: "lesion"}, 1)
    assert plan.normalization[0] == spec["preprocessing"]["normalization"][0] and plan.mirror_axes == (1, 2)
    result = run_training(TrainOptions(dataset=str(breast_dataset), output=str(tmp_path / "tuned"),
                                       base=str(tmp_path / "base"), epochs=1, iterations=2, val_fraction=0.5,
                                       device="cpu", progress="none", encoder_lr_scale=0.0))
    tuned = json.loads((result.bundle / "model.json").read_text(encoding="utf-8"))
    assert tuned["preprocessing"]["normalization"] == spec["preprocessing"]["normalization"]
    assert tuned["provenance"]["base_model"] == "base-ct"
    state = load_bundle(result.bundle).load_state_dicts()[0]
    # frozen encoder: the stem is exactly the base model's
    assert torch.equal(state["stem.weight"], base_model.stem.weight)


def test_nan_loss_is_skipped_lr_lowered_then_training_stops(breast_dataset, tmp_path, monkeypatch, caplog):
    import mednextv2.train.run as run_module

    class NanLoss(DiceCELoss):
        def forward(self, outputs, target):
            return super().forward(outputs, target) * float("nan")

    monkeypatch.setattr(run_module, "DiceCELoss", NanLoss)
    with caplog.at_level(logging.WARNING), pytest.raises(TrainingDiverged, match="NaN or infinite in 5 consecutive steps"):
        run_training(TrainOptions(dataset=str(breast_dataset), output=str(tmp_path / "nan"), preset="v2-tiny",
                                  epochs=1, iterations=10, patch=(16, 32, 32), val_fraction=0, device="cpu",
                                  progress="none"))
    halvings = [r.message for r in caplog.records if "learning rate halved" in r.message]
    assert len(halvings) == 5 and "x0.0312" in halvings[-1]
    assert not (tmp_path / "nan").exists()


def hide_matplotlib(monkeypatch) -> None:
    """Imports of matplotlib fail, as in Slicer's Python, which ships none."""
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)


def test_training_curve_png_without_matplotlib(tmp_path, monkeypatch):
    """Slicer's Python and a fresh install have no matplotlib: the curve is still drawn."""
    import SimpleITK as sitk

    from mednextv2.train import curves

    hide_matplotlib(monkeypatch)
    rows = [{"epoch": e, "train_loss": 2.0 / e, "dice_grey": 0.1 * e} for e in range(1, 6)]
    assert curves.write_png(rows, tmp_path / "curve.png")
    png = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "curve.png")))
    assert png.ndim == 3 and png.shape[2] == 3
    blue, red = (31, 119, 180), (214, 39, 40)
    left, right = png[:, : png.shape[1] // 2], png[:, png.shape[1] // 2:]
    assert (left == blue).all(axis=2).sum() > 50  # the loss line
    assert (right == red).all(axis=2).sum() == 0 and (right == blue).all(axis=2).sum() > 50  # one Dice line
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_training_curve_without_matplotlib_has_axes_ticks_labels_and_legend(tmp_path, monkeypatch, caplog):
    """Slicer ships no matplotlib: the curve still reads (text in ink), and the note is logged once."""
    import SimpleITK as sitk

    from mednextv2.train import curves

    hide_matplotlib(monkeypatch)
    monkeypatch.setattr(curves, "_said_no_matplotlib", False, raising=False)
    caplog.set_level("INFO", logger="mednextv2.train.curves")
    ink = (40, 40, 40)

    def read(path):
        png = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        half = png.shape[1] // 2
        return png[:, :half], png[:, half:]

    def inked(region) -> int:
        return int((region == ink).all(axis=2).sum())

    for epochs in (3, 12):  # one note for every epoch's redraw, not one per epoch
        rows = [{"epoch": e, "train_loss": 1.5 / e} for e in range(1, epochs + 1)]
        assert curves.write_png(rows, tmp_path / "no_validation.png")
    assert caplog.text.count("matplotlib is not installed") == 1
    loss, validation = read(tmp_path / "no_validation.png")
    h, w = loss.shape[:2]
    assert inked(loss[: h // 10]) > 100  # the title
    assert inked(loss[:, : w // 10]) > 100  # y tick labels left of the axis
    assert inked(loss[int(h * 0.86):]) > 100  # x tick labels and "epoch" below the axis
    middle = validation[int(h * 0.35): int(h * 0.65), int(w * 0.2): int(w * 0.8)]
    assert inked(middle) > 100  # "no validation cases", not an empty panel
    rows = [{"epoch": e, "train_loss": 1.5 / e, "dice_grey matter": 0.1 * e, "dice_white matter": 0.05 * e}
            for e in range(1, 6)]
    assert curves.write_png(rows, tmp_path / "curve.png")
    _, validation = read(tmp_path / "curve.png")
    legend = validation[: h // 4, w // 2:]
    assert inked(legend) > 100  # the label names ...
    for colour in curves._PALETTE[:2]:  # ... beside a sample of each line
        assert (legend == colour).all(axis=2).sum() > 20
