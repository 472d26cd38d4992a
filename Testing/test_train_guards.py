"""`mednextv2 train` on inputs that gave tracebacks or silently wrong models (issue 21 §3, §4):
label values far beyond the label count, a full disk while the bundle is written, a case file
deleted during training, --resume after the dataset or the options changed, two runs on one -o.
Real data: the breast MR and its lesion label, v2-tiny on the CPU, one short epoch."""
from __future__ import annotations

import errno
import pathlib
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
def dataset(tmp_path, data_dir):
    folder = tmp_path / "dataset"
    folder.mkdir()
    for name in ("breast1_image.nrrd", "breast1_label.nrrd"):
        shutil.copyfile(data_dir / "mr-breast" / name, folder / name)
    return folder


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
    write_bytes = pathlib.Path.write_bytes

    def full_disk(self, data):
        if self.name.endswith(".safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return write_bytes(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk)
    output = tmp_path / "model"
    assert _train(dataset, output) == 3
    err = capsys.readouterr().err
    assert f"no space left to write {output}" in err and "Traceback" not in err, err
    assert not output.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".model.")]
