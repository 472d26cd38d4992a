"""`mednextv2 segment`: success paths, JSON progress, every bad input -> exit 2 and nothing written,
and SIGTERM -> exit 130 with nothing left behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from mednextv2.cli import main
from segment_fixtures import boundary, make_image, one_torch_thread, threshold_bundle, write_image  # noqa: F401


def _phantom(shape=(12, 40, 36)):
    arr = np.zeros(shape, np.int16)
    arr[3:9, 10:30, 8:28] = 1000
    return make_image(arr, spacing=(1.0, 1.2, 3.0), origin=(4.0, -7.0, 1.5))


@pytest.fixture()
def image_path(tmp_path):
    path = tmp_path / "in" / "ct.nrrd"
    path.parent.mkdir()
    sitk.WriteImage(_phantom(), str(path))
    return path


def _out_dir(tmp_path):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return out


def test_segment_seg_nrrd_with_json_progress(tmp_path, image_path, model_dir, capsys):
    out = _out_dir(tmp_path) / "ct.seg.nrrd"
    rc = main(["segment", str(image_path), "-m", str(model_dir), "-o", str(out), "--device", "cpu",
               "--progress", "json", "--no-tta"])
    assert rc == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(set(r) >= {"stage", "fraction", "eta_s", "message"} for r in records)
    stages = [r["stage"] for r in records]
    assert stages[0] == "preprocess" and "predict" in stages and stages[-1] == "export"
    predict = [r for r in records if r["stage"] == "predict"]
    assert predict[-1]["fraction"] == 1.0 and predict[-1]["tiles_done"] == predict[-1]["tiles_total"]
    result = sitk.ReadImage(str(out))
    assert result.GetSize() == _phantom().GetSize()
    expected = (sitk.GetArrayFromImage(_phantom()) > 300).astype(np.uint8)
    wrong = sitk.GetArrayFromImage(result) != expected
    assert wrong.mean() < 0.02 and not wrong[~boundary(expected)].any()
    assert sorted(p.name for p in out.parent.iterdir()) == ["ct.seg.nrrd"]


def test_segment_labelmap_structures_fast_and_batch(tmp_path, image_path, model_dir):
    out = _out_dir(tmp_path)
    assert main(["segment", str(image_path), "-m", str(model_dir), "-o", str(out / "ct.nii.gz"), "--device", "cpu",
                 "--progress", "none", "--fast", "--structures", "BONE", "--largest-component"]) == 0
    assert json.loads((out / "ct.labels.json").read_text(encoding="utf-8"))["labels"][1]["name"] == "bone"
    # batch: a folder of two cases into a folder
    sitk.WriteImage(_phantom((10, 33, 30)), str(image_path.parent / "second.nii.gz"))
    batch = tmp_path / "batch"
    batch.mkdir()
    assert main(["segment", str(image_path.parent), "-m", str(model_dir), "-o", str(batch), "--device", "cpu",
                 "--progress", "none", "--no-tta"]) == 0
    assert sorted(p.name for p in batch.iterdir()) == [".mednextv2-run", "ct.seg.nrrd", "second.seg.nrrd"]
    assert sitk.ReadImage(str(batch / "second.seg.nrrd")).GetSize() == (30, 33, 10)


def _bad_cases(tmp_path: Path, model_dir: Path, good: Path):
    """name -> (argv without the program name, the text the message must contain)."""
    cases = {}
    out = str(_out_dir(tmp_path) / "r.seg.nrrd")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b not really gzip")
    cases["corrupt file"] = ([str(corrupt)], "cannot read the image")
    truncated = tmp_path / "truncated.nrrd"
    truncated.write_bytes(good.read_bytes()[:400])
    cases["truncated file"] = ([str(truncated)], "cannot read the image")
    cases["missing file"] = ([str(tmp_path / "nope.nii.gz")], "does not exist")
    flat = write_image(sitk.GetImageFromArray(np.random.rand(20, 20)), tmp_path / "flat.nrrd")
    cases["2D image"] = ([str(flat)], "expected a 3D image")
    four = sitk.JoinSeries([_phantom()] * 3)
    cases["4D image"] = ([str(write_image(four, tmp_path / "four.nii.gz"))], "expected a 3D image, got a 4D")
    cases["wrong channel count"] = ([str(good), str(good)], "takes 1 input channel")
    mha = tmp_path / "ok.mha"
    write_image(_phantom(), mha)
    header = mha.read_bytes()
    for name, old, new, message in [
        ("zero spacing", b"ElementSpacing = 1 1.2 3", b"ElementSpacing = 1 0 3", "spacing is zero, negative or NaN"),
        ("NaN spacing", b"ElementSpacing = 1 1.2 3", b"ElementSpacing = 1 nan 3", "spacing is zero, negative or NaN"),
        ("singular direction", b"TransformMatrix = 1 0 0 0 1 0 0 0 1", b"TransformMatrix = 1 0 0 1 0 0 0 0 1",
         "direction matrix is singular")]:
        assert old in header, header[:300]
        path = tmp_path / f"{name.replace(' ', '_')}.mha"
        path.write_bytes(header.replace(old, new))
        cases[name] = ([str(path)], message)
    nan = sitk.GetArrayFromImage(_phantom()).astype(np.float32)
    nan[2, 3, 4] = np.nan
    nan[5, 5, 5] = np.inf
    cases["NaN voxels"] = ([str(write_image(make_image(nan), tmp_path / "nan.nrrd"))], "2 NaN or infinite voxel")
    const = write_image(make_image(np.full((8, 9, 10), 7, np.int16)), tmp_path / "const.nrrd")
    cases["constant image"] = ([str(const)], "constant")
    for name, (inputs, message) in list(cases.items()):
        cases[name] = (inputs + ["-m", str(model_dir), "-o", out], message)
    cases["output folder not writable"] = ([str(good), "-m", str(model_dir), "-o", "/proc/result.seg.nrrd"], "not writable")
    cases["output folder missing"] = ([str(good), "-m", str(model_dir), "-o", str(tmp_path / "no" / "r.seg.nrrd")], "does not exist")
    cases["unknown output type"] = ([str(good), "-m", str(model_dir), "-o", str(tmp_path / "r.png")], "unknown file type")
    cases["unknown model id"] = ([str(good), "-m", "no-such-model-id", "-o", out], "no-such-model-id")
    broken = threshold_bundle().save(tmp_path / "broken_model")
    (broken / "weights.safetensors").unlink()
    cases["bundle with missing weights"] = ([str(good), "-m", str(broken), "-o", out], "weights.safetensors")
    cases["unknown structure"] = ([str(good), "-m", str(model_dir), "-o", out, "--structures", "liver"], "unknown structure")
    cases["bad step"] = ([str(good), "-m", str(model_dir), "-o", out, "--step", "0"], "--step")
    cases["bad threads"] = ([str(good), "-m", str(model_dir), "-o", out, "--threads", "0"], "--threads")
    return cases


def test_every_bad_input_exits_2_and_writes_nothing(tmp_path, tmp_path_factory, image_path, model_dir, capsys,
                                                    monkeypatch):
    monkeypatch.setenv("MEDNEXTV2_HOME", str(tmp_path_factory.mktemp("home")))  # the catalog's cache
    cases = _bad_cases(tmp_path, model_dir, image_path)
    before = {p for p in tmp_path.rglob("*")}
    for name, (argv, message) in cases.items():
        rc = main(["segment"] + argv + ["--device", "cpu", "--progress", "none"])
        err = capsys.readouterr().err
        assert rc == 2, f"{name}: exit {rc}, stderr: {err}"
        assert message.lower() in err.lower(), f"{name}: {err!r}"
        assert {p for p in tmp_path.rglob("*")} == before, f"{name} left files behind"


def test_sigterm_cancels_with_130_and_leaves_nothing(tmp_path, model_dir):
    """Slicer's Cancel sends SIGTERM mid-prediction: exit 130, no output, no temporary."""
    image = tmp_path / "big.nrrd"
    arr = np.zeros((48, 160, 160), np.int16)
    arr[10:40, 30:120, 40:140] = 1000
    sitk.WriteImage(make_image(arr), str(image))
    out = _out_dir(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "mednextv2", "segment", str(image), "-m", str(model_dir),
                             "-o", str(out / "big.seg.nrrd"), "--device", "cpu", "--progress", "json",
                             "--step", "0.25"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:
            if json.loads(line)["stage"] == "predict":
                proc.send_signal(signal.SIGTERM)
                break
        rc = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert rc == 130, proc.stderr.read()
    assert list(out.iterdir()) == []


def test_odd_model_and_output_paths_say_what_was_given_and_what_is_expected(tmp_path, data_dir, capsys):
    """A weights file or a model.json as -m, an output under /proc: messages a user can act on."""
    from mednextv2.cli import main
    from segment_fixtures import threshold_bundle

    bundle = threshold_bundle((300.0,), names=["bone"]).save(tmp_path / "model")
    image = data_dir / "mr-breast" / "breast1_image.nrrd"
    weights = next(bundle.glob("*.safetensors"))
    for given in (weights, bundle / "model.json"):
        rc = main(["segment", str(image), "-m", str(given), "-o", str(tmp_path / "o.seg.nrrd"), "--progress", "none"])
        err = capsys.readouterr().err
        assert rc == 2 and f"model {given} is one file of a bundle" in err and f"give its folder {bundle}" in err, err
        assert "zip" not in err.split(";")[0], err
    rc = main(["segment", str(image), "-m", str(bundle), "-o", "/proc/result.seg.nrrd", "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and "output /proc/result.seg.nrrd" in err and "virtual file system" in err, err
    assert "No such file" not in err
    rc = main(["train", str(data_dir / "mr-breast"), "-o", "/proc/my-model", "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and "-o /proc/my-model" in err and "virtual file system" in err and "Traceback" not in err, err
