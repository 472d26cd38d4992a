"""`mednextv2 train` on inputs that gave tracebacks or silently wrong models:
label values far beyond the label count, a full disk while the bundle is written, a case file
deleted during training, --resume after the dataset or the options changed, two runs on one -o.
Real data: the breast MR and its lesion label, v2-tiny on the CPU, one short epoch."""
from __future__ import annotations

import builtins
import errno
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from mednextv2.bundle import load_bundle
from mednextv2.cli import main
from segment_fixtures import one_torch_thread  # noqa: F401

TINY = ["--preset", "v2-tiny", "--epochs", "1", "--iterations", "1", "--patch", "16", "32", "32",
        "--device", "cpu", "--progress", "none", "--threads", "1"]


@pytest.fixture()
def dataset(breast_dataset):
    return breast_dataset


def _train(dataset, output, *extra) -> int:
    return main(["train", str(dataset), "-o", str(output), *TINY, *map(str, extra)])


def test_a_label_value_of_2_to_the_40_is_mapped_sparsely(tmp_path, dataset, one_torch_thread):
    label_path = dataset / "breast1_label.nrrd"
    label = sitk.ReadImage(str(label_path))
    huge = sitk.GetImageFromArray(sitk.GetArrayFromImage(label).astype(np.int64) << 40)
    huge.CopyInformation(label)
    label_path.unlink()
    sitk.WriteImage(huge, str(dataset / "breast1_label.nii.gz"))
    assert _train(dataset, tmp_path / "model") == 0
    bundle = load_bundle(tmp_path / "model")
    assert [(lab.value, lab.name) for lab in bundle.labels] == [(1, "label 1099511627776")]
    cached = np.load(tmp_path / "model.training" / "cache" / "breast1_label.npy")
    assert cached.dtype == np.uint8 and set(np.unique(cached)) == {0, 1}


def test_a_full_disk_while_the_bundle_is_written_exits_3(tmp_path, dataset, monkeypatch, capsys, one_torch_thread):
    real_open = io.open

    def full_disk(file, mode="r", *args, **kwargs):  # the disk fills up as the weights are written
        if str(file).endswith(".safetensors") and set(mode) & set("wxa"):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(io, "open", full_disk)  # pathlib's writes
    monkeypatch.setattr(builtins, "open", full_disk)
    output = tmp_path / "model"
    assert _train(dataset, output) == 3
    err = capsys.readouterr().err
    assert f"no space left to write {output}" in err and "Traceback" not in err, err
    assert not output.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".model.")]


def test_a_case_file_deleted_during_training_still_gives_the_bundle(tmp_path, dataset, monkeypatch, one_torch_thread):
    from mednextv2.train import run as train_run
    from mednextv2.train.datasets import discover_dataset
    from mednextv2.train.output import dataset_digest

    before = dataset_digest(discover_dataset(dataset).cases)
    real_run = train_run.Trainer.run

    def run_then_lose_the_label(trainer):
        state = real_run(trainer)
        (dataset / "breast1_label.nrrd").unlink()  # moved away while the last epoch ended
        return state

    monkeypatch.setattr(train_run.Trainer, "run", run_then_lose_the_label)
    assert _train(dataset, tmp_path / "model") == 0
    training = load_bundle(tmp_path / "model").spec.to_json()["provenance"]["training"]
    assert training["dataset_sha256"] == before  # what was trained on


def _add_case(dataset: Path, name: str) -> None:
    for kind in ("image", "label"):
        shutil.copyfile(dataset / f"breast1_{kind}.nrrd", dataset / f"{name}_{kind}.nrrd")


def test_resume_refuses_a_dataset_that_changed(tmp_path, dataset, capsys, one_torch_thread):
    assert _train(dataset, tmp_path / "model") == 0
    _add_case(dataset, "breast2")
    assert _train(dataset, tmp_path / "model", "--resume") == 2
    err = capsys.readouterr().err
    assert "--resume: the dataset changed since the interrupted run" in err and "case(s) added: breast2" in err, err
    (dataset / "breast2_image.nrrd").unlink()
    (dataset / "breast2_label.nrrd").unlink()
    label = sitk.ReadImage(str(dataset / "breast1_label.nrrd"))
    sitk.WriteImage(label * 2, str(dataset / "breast1_label.nrrd"))  # a new class where the old one was
    assert _train(dataset, tmp_path / "model", "--resume") == 2
    assert "labels were {1: 'label 1'}, now {2: 'label 2'}" in capsys.readouterr().err
    sitk.WriteImage(label, str(dataset / "breast1_label.nrrd"))
    (dataset / "breast1_image.nrrd").write_bytes((dataset / "breast1_image.nrrd").read_bytes()[:-2] + b"\0\1")
    assert _train(dataset, tmp_path / "model", "--resume") == 2
    assert "the content of its image or label files differs" in capsys.readouterr().err


def test_resume_refuses_renamed_labels(tmp_path, dataset, capsys, one_torch_thread):
    listing = tmp_path / "cases.json"

    def write(name):
        listing.write_text(json.dumps({"labels": {"1": name}, "cases": [
            {"image": str(dataset / "breast1_image.nrrd"), "label": str(dataset / "breast1_label.nrrd")}]}))

    write("lesion")
    assert _train(listing, tmp_path / "model") == 0
    write("tumour")
    assert _train(listing, tmp_path / "model", "--resume") == 2
    assert "labels were {1: 'lesion'}, now {1: 'tumour'}" in capsys.readouterr().err


def test_resume_refuses_a_changed_option_and_keeps_the_ones_left_out(tmp_path, dataset, capsys, caplog,
                                                                     one_torch_thread):
    _add_case(dataset, "breast2")
    assert _train(dataset, tmp_path / "model", "--val-cases", "breast2", "--seed", "3") == 0
    common = ["train", str(dataset), "-o", str(tmp_path / "model"), "--epochs", "1", "--device", "cpu",
              "--progress", "none", "--threads", "1", "--resume"]
    assert main(common + ["--patch", "32", "32", "32", "--preset", "v2-tiny"]) == 2
    err = capsys.readouterr().err
    assert "--patch [32, 32, 32] (the run started with [16, 32, 32])" in err and "--preset" not in err, err
    with caplog.at_level("INFO"):
        assert main(common) == 0
    kept = [r.getMessage() for r in caplog.records if "--resume keeps" in r.getMessage()]
    assert kept and all(f in kept[0] for f in ("--preset v2-tiny", "--patch [16, 32, 32]", "--val-cases ['breast2']",
                                                 "--seed 3", "--iterations 1")), kept
    metrics = load_bundle(tmp_path / "model").spec.to_json()["provenance"]["metrics"]
    assert metrics["validation_cases"] == ["breast2"]


def test_a_second_train_on_the_same_output_is_refused_while_the_first_runs(tmp_path, dataset, capsys):
    from mednextv2.locks import FileLock
    from mednextv2.train.output import WORK_LOCK

    work = tmp_path / "model.training"
    work.mkdir()
    with FileLock(work / WORK_LOCK, timeout=0):  # what a running `train` holds (an OS lock)
        assert _train(dataset, tmp_path / "model") == 2
    err = capsys.readouterr().err
    assert f"another `mednextv2 train` is running with the work folder {work}" in err, err
    assert not (tmp_path / "model").exists() and sorted(p.name for p in work.iterdir()) == [WORK_LOCK]


def test_two_real_train_processes_on_one_output_only_one_runs(tmp_path, dataset, capsys):
    import json as json_lines
    import os
    import subprocess
    import sys

    import mednextv2

    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(mednextv2.__file__).resolve().parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    first = subprocess.Popen([sys.executable, "-m", "mednextv2", "train", str(dataset), "-o", str(tmp_path / "model"),
                              "--preset", "v2-tiny", "--epochs", "2", "--iterations", "10", "--patch", "16", "32", "32",
                              "--device", "cpu", "--progress", "json", "--threads", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in first.stdout:  # wait until the first run trains
            if json_lines.loads(line).get("stage") == "train":
                break
        assert _train(dataset, tmp_path / "model") == 2
        assert "another `mednextv2 train` is running with the work folder" in capsys.readouterr().err
        first.stdout.read()
        assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
    assert load_bundle(tmp_path / "model").spec.to_json()["provenance"]["training"]["epochs"] == 2
