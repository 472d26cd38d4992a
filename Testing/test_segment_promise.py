"""`segment` never writes over its inputs (docs/promise.md).

Real scans (copies of the real data in tmp_path) are hashed before and after: a refused command
exits 2 and leaves every byte of every input as it was.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_segment_image_io import _write_dicom_series

from mednextv2.bundle import Bundle
from mednextv2.cli import main
from mednextv2.errors import InputError
from mednextv2.inference.pipeline import segment_folder
from segment_fixtures import (bundle_spec, one_torch_thread, threshold_bundle, threshold_state_dict,  # noqa: F401
                              tiny_config)


def _hashes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_patch_model(tmp_path_factory):
    return threshold_bundle((300.0,), names=["bone"], patch=(16, 32, 32)).save(tmp_path_factory.mktemp("m") / "model")


@pytest.fixture(scope="module")
def model2_dir(tmp_path_factory):
    config = tiny_config(in_channels=2)
    spec = bundle_spec(config, names=["bone"])
    return Bundle.create(spec, [threshold_state_dict(config, [3.0])]).save(tmp_path_factory.mktemp("m2") / "model")


@pytest.fixture()
def scans(tmp_path, data_dir):
    """The real breast MR as .nrrd (a copy) and as .nii.gz (converted), in a folder of their own."""
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copyfile(data_dir / "mr-breast" / "breast1_image.nrrd", folder / "breast.nrrd")
    sitk.WriteImage(sitk.ReadImage(str(data_dir / "mr-breast" / "breast1_image.nrrd")), str(folder / "breast2.nii.gz"))
    return folder


def _segment(*args) -> int:
    return main(["segment", *map(str, args), "--device", "cpu", "--no-tta", "--progress", "none"])


@pytest.mark.parametrize("name", ["breast2.nii.gz", "breast.nrrd"])  # rows 3 and 4
def test_output_equal_to_the_input_is_refused(scans, small_patch_model, name, capsys):
    before = _hashes(scans)
    assert _segment(scans / name, "-m", small_patch_model, "-o", scans / name) == 2
    assert "is the input" in capsys.readouterr().err
    assert _hashes(scans) == before


def test_output_reaching_the_input_by_another_spelling_is_refused(scans, small_patch_model, capsys):
    (scans / "sub").mkdir()
    (scans / "link.nrrd").symlink_to(scans / "breast.nrrd")
    os.link(scans / "breast.nrrd", scans / "hard.nrrd")  # resolves elsewhere; the same inode
    before = _hashes(scans)
    for out in (scans / "sub" / ".." / "breast.nrrd", scans / "link.nrrd", scans / "hard.nrrd"):
        assert _segment(scans / "breast.nrrd", "-m", small_patch_model, "-o", out) == 2
    assert _hashes(scans) == before


def test_output_equal_to_a_second_channel_is_refused(scans, model2_dir):
    before = _hashes(scans)
    assert _segment(scans / "breast.nrrd", scans / "breast2.nii.gz", "-m", model2_dir, "-o", scans / "breast2.nii.gz") == 2
    assert _hashes(scans) == before


def test_batch_into_the_input_folder_is_refused_where_names_collide(scans, small_patch_model, capsys):  # row 5
    before = _hashes(scans)
    for fmt in ("nii.gz", "nrrd"):
        assert _segment(scans, "-m", small_patch_model, "-o", scans, "--format", fmt) == 2
        assert "is the input" in capsys.readouterr().err
    assert _hashes(scans) == before


def test_batch_into_the_input_folder_with_names_that_cannot_collide_writes_beside(tmp_path, data_dir,
                                                                                  small_patch_model):
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copyfile(data_dir / "mr-breast" / "breast1_image.nrrd", folder / "breast.nrrd")
    before = _hashes(folder)
    assert _segment(folder, "-m", small_patch_model, "-o", folder) == 0  # breast.seg.nrrd beside breast.nrrd
    after = _hashes(folder)
    assert {k: after[k] for k in before} == before and set(after) - set(before) == {"breast.seg.nrrd",
                                                                                 ".mednextv2-run/breast.json"}
    # A second run sees the result as a second "breast" case: refused, nothing touched.
    assert _segment(folder, "-m", small_patch_model, "-o", folder) == 2
    assert _hashes(folder) == after


def test_python_api_refuses_too(scans, small_patch_model):
    before = _hashes(scans)
    with pytest.raises(InputError, match="is the input"):
        segment_folder(scans, small_patch_model, scans, ".nii.gz", device="cpu", tta=False)
    assert _hashes(scans) == before


def test_a_file_of_a_dicom_input_folder_is_an_input(tmp_path, data_dir):
    from mednextv2.output_guard import refuse_writing_over_inputs

    image = sitk.ReadImage(str(data_dir / "mr-breast" / "breast1_image.nrrd"))[:, :, :4]
    _write_dicom_series(sitk.Cast(image, sitk.sitkInt16), tmp_path / "series")
    with pytest.raises(InputError, match="is the input"):
        refuse_writing_over_inputs([tmp_path / "series" / "slice002.dcm"], [tmp_path / "series"])
    with pytest.raises(InputError, match="is the input"):
        refuse_writing_over_inputs([tmp_path / "series"], [tmp_path / "series"])
    refuse_writing_over_inputs([tmp_path / "series" / "result.seg.nrrd"], [tmp_path / "series"])  # a new name: fine
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "series" / "slice002.dcm"))),
                          sitk.GetArrayFromImage(image[:, :, 2:3]).astype(np.int16))


def test_input_refusals_come_before_a_catalog_model_is_downloaded(tmp_path, scans, monkeypatch, capsys):
    """A missing or unreadable input is refused before the model downloads (hundreds of MB in real life)."""
    from mednextv2.inference.pipeline import segment
    from http_test_server import FileServer, catalog_entry, catalog_json, tiny_bundle_zip

    monkeypatch.setenv("MEDNEXTV2_HOME", str(tmp_path / "home"))
    data = tiny_bundle_zip(tmp_path / "tiny.zip")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    with FileServer() as server:
        server.add("/tiny.zip", data)
        catalog = tmp_path / "catalog.json"
        catalog.write_text(catalog_json([catalog_entry("tiny-ct", data, [server.url("/tiny.zip")])]))
        monkeypatch.setenv("MEDNEXTV2_CATALOGS", str(catalog))
        for given, needle in ((tmp_path / "missing.nii.gz", "does not exist"), (broken, "cannot read the image")):
            out = tmp_path / "out.seg.nrrd"
            rc = main(["segment", str(given), "-m", "tiny-ct", "-o", str(out), "--progress", "none"])
            err = capsys.readouterr().err
            assert rc == 2 and str(given) in err and needle in err, err
            with pytest.raises(InputError, match=needle):
                segment(str(given), "tiny-ct")
            # Two channels off one grid are refused before the download too.
            with pytest.raises(InputError, match="not on the grid"):
                segment([str(scans / "breast.nrrd"), _shifted(scans / "breast.nrrd", tmp_path)], "tiny-ct")
        # Batch mode: an output that would replace an input is refused before the download too.
        rc = main(["segment", str(scans), "-m", "tiny-ct", "-o", str(scans), "--format", "nrrd", "--progress", "none"])
        err = capsys.readouterr().err
        assert rc == 2 and "is the input" in err, err
        assert server.requests_for("/tiny.zip") == []
    assert not (tmp_path / "home" / "models" / "tiny-ct").exists()


def _shifted(path: Path, folder: Path) -> str:
    image = sitk.ReadImage(str(path))
    image.SetOrigin([o + 5.0 for o in image.GetOrigin()])
    out = folder / "shifted.nrrd"
    sitk.WriteImage(image, str(out))
    return str(out)


@pytest.mark.parametrize("output, needle", [("out", "is a folder; give a file name"),
                                            ("out.txt", "unknown file type"),
                                            ("missing/r.seg.nrrd", "does not exist")])
def test_output_refusals_come_before_the_model_loads(tmp_path, scans, output, needle, capsys):
    """One check_destination for the command line and Segmenter.segment_to_file: a bad output is
    refused before the model (here an empty folder, which would fail differently) is read."""
    from mednextv2.inference.options import SegmentOptions
    from mednextv2.inference.pipeline import check_destination

    (tmp_path / "out").mkdir()
    (tmp_path / "not-a-model").mkdir()
    rc = main(["segment", str(scans / "breast.nrrd"), "-m", str(tmp_path / "not-a-model"), "-o",
               str(tmp_path / output), "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "model.json" not in err, err
    with pytest.raises(InputError, match=needle):
        check_destination(tmp_path / output, SegmentOptions(), [scans / "breast.nrrd"])
    assert check_destination(str(tmp_path / "r.seg.nrrd"), SegmentOptions(), []) == tmp_path / "r.seg.nrrd"
