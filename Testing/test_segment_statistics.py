"""`segment --uncertainty MAP --statistics FILE`: the numbers against numpy on a real scan and its
real label map, the files the command writes, its refusals (before the model loads), batch mode."""
from __future__ import annotations

import csv
import json
import shutil

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from mednextv2.bundle import Label
from mednextv2.cli import main
from mednextv2.inference import statistics
from mednextv2.inference.export import CONFIDENCE_TAG
from mednextv2.inference.statistics import COLUMNS
from segment_fixtures import one_torch_thread, threshold_bundle  # noqa: F401

# breast1 MR intensities run 0..~800: the threshold model labels the brighter tissue.
THRESHOLD = 150.0


@pytest.fixture(scope="module")
def bright_model(tmp_path_factory):
    return threshold_bundle((THRESHOLD,), names=["bright"], mirror_axes=()).save(tmp_path_factory.mktemp("bundle") / "model")


@pytest.fixture()
def scan(tmp_path, data_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    return shutil.copy(data_dir / "mr-breast" / "breast1_image.nrrd", folder / "breast1.nrrd")


def test_statistics_equal_numpy_on_a_real_scan_and_label(data_dir):
    image = sitk.ReadImage(str(data_dir / "mr-breast" / "breast1_image.nrrd"))
    label = sitk.Cast(sitk.ReadImage(str(data_dir / "mr-breast" / "breast1_label.nrrd")), sitk.sitkUInt8)
    arr, lab = sitk.GetArrayFromImage(image).astype(np.float64), sitk.GetArrayFromImage(label)
    rng = np.random.default_rng(0)
    unc_arr = rng.uniform(0, 1, lab.shape).astype(np.float32)
    uncertainty = sitk.GetImageFromArray(unc_arr)
    uncertainty.CopyInformation(image)
    labels = [Label(1, "lesion", (255, 0, 0)), Label(2, "absent", (0, 255, 0))]
    rows = statistics.segment_statistics(label, labels, image, uncertainty, n_classes=3, case="breast1")

    mask = lab == 1
    assert mask.sum() == 143  # the data README's count
    lesion, absent = rows
    assert [list(r) for r in rows] == [list(COLUMNS)] * 2
    assert lesion["case"] == "breast1" and lesion["segment"] == "lesion" and lesion["value"] == 1
    assert lesion["voxels"] == 143
    assert lesion["volume_ml"] == pytest.approx(143 * np.prod(image.GetSpacing()) / 1000.0, rel=1e-12)
    assert lesion["intensity_mean"] == pytest.approx(arr[mask].mean(), rel=1e-12)
    assert lesion["intensity_std"] == pytest.approx(arr[mask].std(), rel=1e-9)
    assert lesion["intensity_min"] == arr[mask].min() and lesion["intensity_max"] == arr[mask].max()
    # the mean probability of the lesion class: the map is (1 - p) x 3 / 2 for 3 classes
    assert lesion["mean_confidence"] == pytest.approx(float(np.mean(1.0 - unc_arr[mask].astype(np.float64) * 2 / 3)),
                                                      rel=1e-9)
    assert absent == {"case": "breast1", "segment": "absent", "value": 2, "voxels": 0, "volume_ml": 0.0,
                      "intensity_mean": None, "intensity_std": None, "intensity_min": None, "intensity_max": None,
                      "mean_confidence": None}


def _csv_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        return list(reader)


def test_flags_write_the_map_statistics_and_confidence_on_the_input_grid(tmp_path, scan, bright_model):
    out = tmp_path / "out"
    out.mkdir()
    for result, unc, stats in [("r.nii.gz", "u.nii.gz", "s.csv"), ("r.seg.nrrd", "u.nrrd", "s.json")]:
        rc = main(["segment", str(scan), "-m", str(bright_model), "-o", str(out / result), "--device", "cpu",
                   "--progress", "none", "--uncertainty", str(out / unc), "--statistics", str(out / stats)])
        assert rc == 0
        image, u_img = sitk.ReadImage(str(scan)), sitk.ReadImage(str(out / unc))
        assert u_img.GetPixelID() == sitk.sitkFloat32 and u_img.GetSize() == image.GetSize()
        assert np.allclose(u_img.GetOrigin(), image.GetOrigin(), atol=1e-5)
        assert np.allclose(u_img.GetSpacing(), image.GetSpacing(), atol=1e-6)
        assert np.allclose(u_img.GetDirection(), image.GetDirection(), atol=1e-6)
        u = sitk.GetArrayFromImage(u_img)
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / result)))
        assert 0 <= u.min() and u.max() <= 1 and u.max() > 0.5  # the threshold crosses the scan somewhere
        intensity = sitk.GetArrayFromImage(image).astype(np.float64)
        mask = labels == 1
        assert mask.sum() > 100
        if stats.endswith(".csv"):
            (row,) = _csv_rows(out / stats)
            confidence = float(row["mean_confidence"])
            assert row["case"] == "breast1" and row["segment"] == "bright" and int(row["voxels"]) == mask.sum()
            assert float(row["intensity_mean"]) == pytest.approx(intensity[mask].mean(), rel=1e-9)
            table = json.loads((out / "r.labels.json").read_text())
            assert table["labels"][1]["mean_confidence"] == pytest.approx(confidence, rel=1e-12)
        else:
            doc = json.loads((out / stats).read_text())
            assert doc["format"] == "mednextv2-statistics" and doc["version"] == 1
            (row,) = doc["rows"]
            assert list(row) == list(COLUMNS)
            confidence = row["mean_confidence"]
            _, header = nrrd.read(str(out / result))
            assert f"{CONFIDENCE_TAG}:{confidence:.4f}|" in header["Segment0_Tags"]
        assert confidence == pytest.approx(float(np.mean(1.0 - u[mask].astype(np.float64) / 2)), rel=1e-6)  # 2 classes
        assert 0.5 < confidence <= 1.0


def test_refusals_come_before_the_model_and_write_nothing(tmp_path, scan, bright_model, capsys):
    out = tmp_path / "out"
    out.mkdir()
    missing_model = str(tmp_path / "no-such-bundle")  # the model is never looked at: every refusal comes first
    base = ["segment", str(scan), "-o", str(out / "r.nii.gz"), "--device", "cpu", "--progress", "none"]
    cases = {
        "map over the input": (["--uncertainty", str(scan)], "is the input"),
        "map as a seg.nrrd": (["--uncertainty", str(out / "u.seg.nrrd")], "float image"),
        "map of unknown type": (["--uncertainty", str(out / "u.png")], "float image"),
        "map is the output": (["--uncertainty", str(out / "r.nii.gz")], "same file"),
        "map is a folder for one case": (["--uncertainty", str(out)], "is a folder"),
        "map folder missing": (["--uncertainty", str(tmp_path / "no" / "u.nrrd")], "does not exist"),
        "statistics of unknown type": (["--statistics", str(out / "s.txt")], ".csv or .json"),
        "statistics is the input": (["--statistics", str(scan)], ".csv or .json"),
        "statistics is the label table": (["--statistics", str(out / "r.labels.json")], "same file"),
    }
    files = lambda: {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}  # noqa: E731
    before = files()
    for name, (extra, message) in cases.items():
        rc = main(base + ["-m", missing_model] + extra)
        err = capsys.readouterr().err
        assert rc == 2, f"{name}: exit {rc}: {err}"
        assert message.lower() in err.lower(), f"{name}: {err!r}"
        assert files() == before, f"{name} changed files"


def test_batch_writes_a_map_per_case_and_one_row_per_case_and_segment(tmp_path, data_dir, bright_model, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    shutil.copy(data_dir / "mr-breast" / "breast1_image.nrrd", cases / "a.nrrd")
    flipped = sitk.Flip(sitk.ReadImage(str(data_dir / "mr-breast" / "breast1_image.nrrd")), [True, False, True])
    sitk.WriteImage(flipped, str(cases / "b.nrrd"))
    out, maps = tmp_path / "out", tmp_path / "maps"
    out.mkdir(), maps.mkdir()
    common = ["segment", str(cases), "-m", str(bright_model), "-o", str(out), "--device", "cpu", "--progress", "none"]

    rc = main(common + ["--uncertainty", str(tmp_path / "maps.nrrd")])
    assert rc == 2 and "existing folder" in capsys.readouterr().err
    assert not any(out.iterdir())

    rc = main(common + ["--uncertainty", str(maps), "--statistics", str(tmp_path / "stats.csv")])
    assert rc == 0
    assert sorted(p.name for p in maps.iterdir()) == ["a.uncertainty.nrrd", "b.uncertainty.nrrd"]
    rows = _csv_rows(tmp_path / "stats.csv")
    assert [(r["case"], r["segment"]) for r in rows] == [("a", "bright"), ("b", "bright")]
    for case in "ab":
        image = sitk.ReadImage(str(cases / f"{case}.nrrd"))
        u_img = sitk.ReadImage(str(maps / f"{case}.uncertainty.nrrd"))
        assert u_img.GetSize() == image.GetSize()
        assert np.allclose(u_img.GetDirection(), image.GetDirection()) and np.allclose(u_img.GetOrigin(), image.GetOrigin())
    # The same anatomy, flipped on disk: the same statistics.
    a, b = rows
    assert int(a["voxels"]) == pytest.approx(int(b["voxels"]), rel=0.005)
    assert float(a["mean_confidence"]) == pytest.approx(float(b["mean_confidence"]), abs=1e-3)

    rc = main(common + ["--uncertainty", str(cases)])  # maps beside the inputs: names cannot collide
    assert rc == 0 and (cases / "a.uncertainty.nrrd").is_file()
    # Run again on that folder: the engine's own maps (known by their header marker) are not cases,
    # a user's image of the same name is.
    mine = cases / "c.uncertainty.nrrd"
    shutil.copy(cases / "a.nrrd", mine)
    rc = main(common + ["--uncertainty", str(maps), "--statistics", str(tmp_path / "again.json")])
    assert rc == 0
    again = json.loads((tmp_path / "again.json").read_text())["rows"]
    assert [r["case"] for r in again] == ["a", "b", "c.uncertainty"]
    assert mine.read_bytes() == (cases / "a.nrrd").read_bytes()


def test_csv_shows_names_that_look_like_formulas_as_text(tmp_path):
    rows = [{"case": "=cmd|' /C calc'!A0", "segment": "@SUM(1)", "value": 1, "voxels": 0, "volume_ml": 0.0,
             "intensity_mean": None, "intensity_std": None, "intensity_min": None, "intensity_max": None,
             "mean_confidence": None}]
    statistics.write_statistics(rows, tmp_path / "s.csv")
    (row,) = _csv_rows(tmp_path / "s.csv")
    assert row["case"] == "'=cmd|' /C calc'!A0" and row["segment"] == "'@SUM(1)" and row["mean_confidence"] == ""
    statistics.write_statistics(rows, tmp_path / "s.json")  # JSON keeps the names as they are
    assert json.loads((tmp_path / "s.json").read_text())["rows"][0]["case"] == rows[0]["case"]


def test_segment_options_check_both_names_without_a_model(tmp_path):
    from mednextv2.errors import InputError
    from mednextv2.inference.options import SegmentOptions

    ok = SegmentOptions(uncertainty=str(tmp_path / "u.NII.GZ"), statistics=str(tmp_path / "s.Json"))
    assert ok.uncertainty.endswith("u.NII.GZ") and ok.statistics.endswith("s.Json")
    assert SegmentOptions(uncertainty=str(tmp_path)).uncertainty == str(tmp_path)  # a folder: batch mode
    for kwargs, message in [({"uncertainty": "u.seg.nrrd"}, "float image"), ({"uncertainty": "u.png"}, "float image"),
                            ({"uncertainty": ""}, "file name"), ({"statistics": "s.xlsx"}, ".csv or .json"),
                            ({"statistics": str(tmp_path)}, ".csv or .json")]:
        with pytest.raises(InputError, match=message):
            SegmentOptions(**kwargs)
