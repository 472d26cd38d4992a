"""TrainOptions is the one source of the `train` options, and bad inputs are refused early:
an all-background case is found by the dataset check, an unknown --preset is exit 2 naming the
valid ones. The dataset is made of copies of the real breast MR and its lesion mask."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import subprocess
import sys
from typing import Optional, Tuple

import pytest
import SimpleITK as sitk

from mednextv2.cli import build_parser, main
from mednextv2.cli.dataclass_args import add_dataclass_arguments, dataclass_from_args
from mednextv2.errors import InputError
from mednextv2.network import PRESETS
from mednextv2.option_fields import cli
from mednextv2.train.checks import validate_dataset
from mednextv2.train.datasets import discover_dataset
from mednextv2.train.options import TrainOptions
from mednextv2.train.run import split_cases
from segment_fixtures import one_torch_thread  # noqa: F401

TINY = ["--preset", "v2-tiny", "--epochs", "1", "--iterations", "1", "--patch", "16", "32", "32",
        "--device", "cpu", "--progress", "none", "--threads", "1"]


def _train_args(argv):
    return build_parser().parse_args(["train", *argv])


def test_every_flag_maps_onto_its_field():
    args = _train_args(["DS", "-o", "OUT", "--base", "m", "--minutes", "2.5", "--epochs", "3", "--iterations", "7",
                        "--patch", "16", "32", "48", "--spacing", "2", "1.5", "1", "--batch-size", "4", "--device",
                        "cpu", "--val-cases", "a", "b", "--val-every", "2", "--resume", "--seed", "5", "--progress",
                        "json", "--lr", "0.01", "--encoder-lr-scale", "0.5", "--checkpointing", "--precision", "fp32",
                        "--elastic", "--work-dir", "W", "--title", "T", "--threads", "2"])
    assert dataclass_from_args(TrainOptions, args) == TrainOptions(
        dataset="DS", output="OUT", base="m", minutes=2.5, epochs=3, iterations=7, patch=(16, 32, 48),
        spacing=(2.0, 1.5, 1.0), batch_size=4, device="cpu", val_cases=("a", "b"), val_every=2, resume=True, seed=5,
        progress="json", lr=0.01, encoder_lr_scale=0.5, checkpointing=True, precision="fp32", elastic=True,
        work_dir="W", title="T", threads=2)
    defaults = dataclass_from_args(TrainOptions, _train_args(["DS", "--output", "OUT"]))
    assert defaults == TrainOptions(dataset="DS", output="OUT")


@pytest.mark.parametrize("argv", [["DS", "-o", "O", "--base", "m", "--preset", "v2-tiny"],
                                  ["DS", "-o", "O", "--val-fraction", "0.1", "--val-cases", "a"],
                                  ["DS"], ["DS", "-o", "O", "--progress", "loud"], ["DS", "-o", "O", "--patch", "16"]])
def test_argparse_refuses_what_the_fields_rule_out(argv):
    with pytest.raises(SystemExit) as e:
        _train_args(argv)
    assert e.value.code == 2


def test_adding_an_option_is_adding_a_field():
    @dataclasses.dataclass(frozen=True)
    class Extended(TrainOptions):
        budget_gib: Optional[float] = dataclasses.field(default=None, metadata=cli("memory budget"))
        stages: Tuple[int, ...] = dataclasses.field(default=(), metadata=cli("stages", "--stage"))

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Extended)
    options = dataclass_from_args(Extended, parser.parse_args(["D", "-o", "O", "--budget-gib", "5", "--stage", "1", "2"]))
    assert options.budget_gib == 5.0 and options.stages == (1, 2) and options.output == "O"


def test_choices_in_the_metadata_are_checked_from_python_too():
    with pytest.raises(ValueError, match="--precision must be one of auto, fp32"):
        TrainOptions(dataset="d", output="o", precision="bf16")
    with pytest.raises(ValueError, match="--progress"):
        TrainOptions(dataset="d", output="o", progress="loud")


def test_unknown_preset_is_exit_2_naming_the_valid_ones(tmp_path, data_dir, capsys):  # row 18
    rc = main(["train", str(data_dir / "mr-breast"), "-o", str(tmp_path / "model"), "--preset", "v9-huge"])
    err = capsys.readouterr().err
    assert rc == 2 and "v9-huge" in err and all(name in err for name in PRESETS)
    assert list(tmp_path.iterdir()) == []


def test_a_patch_too_small_for_the_network_is_exit_2_before_any_work(tmp_path, data_dir, capsys):
    """16^3 leaves a 1x1x1 bottleneck: GroupNorm's 'Expected more than 1 value per channel' traceback before."""
    rc = main(["train", str(data_dir / "mr-breast"), "-o", str(tmp_path / "model"), "--preset", "v2-tiny",
               "--patch", "16", "16", "16", "--batch-size", "1", "--epochs", "1", "--iterations", "1",
               "--device", "cpu", "--progress", "none", "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "--patch 16 16 16" in err and "at least 32 on one axis" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    assert TrainOptions(dataset="d", output="o", patch=[32, 16, 16]).patch == (32, 16, 16)
    with pytest.raises(InputError, match="divisible by 16"):
        TrainOptions(dataset="d", output="o", patch=(24, 32, 32))


@pytest.fixture()
def dataset(tmp_path, data_dir):
    """Three cases: two copies of the real breast MR with its lesion mask, one with an empty mask."""
    folder = tmp_path / "dataset"
    folder.mkdir()
    src = data_dir / "mr-breast"
    for case in ("a", "c", "empty"):
        shutil.copyfile(src / "breast1_image.nrrd", folder / f"{case}_image.nrrd")
    for case in ("a", "c"):
        shutil.copyfile(src / "breast1_label.nrrd", folder / f"{case}_label.nrrd")
    label = sitk.ReadImage(str(src / "breast1_label.nrrd"))
    sitk.WriteImage(label * 0, str(folder / "empty_label.nrrd"))
    return folder


def test_dataset_check_names_the_background_only_case(dataset, caplog):  # row 16
    with caplog.at_level(logging.WARNING):
        checked = validate_dataset(discover_dataset(str(dataset)))
    assert checked.background_only == ("empty",)
    assert "empty: the label map is background only" in caplog.text


def test_background_only_validation_case_is_refused_before_planning(dataset, tmp_path, capsys):  # row 16
    rc = main(["train", str(dataset), "-o", str(tmp_path / "model"), "--val-cases", "empty", *TINY])
    err = capsys.readouterr().err
    assert rc == 2 and "--val-cases empty" in err and "background only" in err
    assert not (tmp_path / "model.training" / "plan.json").exists() and not (tmp_path / "model").exists()


def test_random_split_keeps_background_only_cases_in_training(dataset):
    cases = discover_dataset(str(dataset)).cases
    for seed in range(20):
        train, val = split_cases(cases, (), 0.34, seed, background_only=("empty",))
        assert [c.name for c in val] in (["a"], ["c"]) and "empty" in [c.name for c in train]
    train, val = split_cases(cases[:2], (), 0.5, 0, background_only=("empty",))  # a + empty: nothing to hold out
    assert val == [] and len(train) == 2


def test_default_split_holds_cases_out_only_from_five_labeled_cases_up(dataset, caplog):
    from dataclasses import replace

    cases = discover_dataset(str(dataset)).cases  # a, c, empty
    with caplog.at_level(logging.WARNING):
        train, val = split_cases(cases, (), None, 0, background_only=("empty",))
    assert val == [] and len(train) == 3  # 2 labeled cases: both are trained on
    assert "2 case(s) with foreground: all are trained on" in caplog.text
    many = [replace(cases[0], name=f"case{i}") for i in range(10)]
    train, val = split_cases(many[:5], (), None, 0)
    assert (len(train), len(val)) == (4, 1)
    train, val = split_cases(many, (), None, 0)
    assert (len(train), len(val)) == (8, 2)  # the default 20 %
    # An explicit fraction or case list is the user's choice, however few cases there are.
    assert [c.name for c in split_cases(cases, ("a",), None, 0)[1]] == ["a"]
    assert len(split_cases(cases, (), 0.34, 0, background_only=("empty",))[1]) == 1


def test_a_background_only_training_case_is_trained_on(dataset, tmp_path):  # row 16, the warned case
    assert main(["train", str(dataset), "-o", str(tmp_path / "model"), "--val-fraction", "0.34", *TINY]) == 0
    assert (tmp_path / "model.training" / "cache" / "empty_label.npy").exists()


def test_building_the_train_flags_does_not_import_torch():
    """Every `mednextv2` command builds the whole parser: torch there would cost seconds each time."""
    code = ("import sys; from mednextv2.cli import build_parser; build_parser(); "
            "import mednextv2.inference.options; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.stdout.strip() == "False"
