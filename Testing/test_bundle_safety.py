"""Hostile bundles, catalogs and zips, and the atomic writers:
each is refused with exit 2 and a message naming the file, never a traceback or a silent result."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch
from test_train_parts import breast_dataset  # noqa: F401

from mednextv2 import atomic
from mednextv2.bundle import load_bundle
from mednextv2.cli import main
from mednextv2.errors import InputError
from mednextv2.store.catalog import parse_catalog
from mednextv2.store.importer import import_model
from mednextv2.train import checkpoint
from http_test_server import catalog_entry, catalog_json
from segment_fixtures import threshold_bundle

pytestmark = pytest.mark.usefixtures("home")


@pytest.fixture(scope="module")
def ct_crop(data_dir, tmp_path_factory) -> Path:
    """A small crop of the real lung CT."""
    image = sitk.ReadImage(str(data_dir / "ct-lung" / "lung1_image.nrrd"))
    size = image.GetSize()
    crop = sitk.RegionOfInterest(image, [48, 48, 12], [size[0] // 2, size[1] // 2, size[2] // 2])
    path = tmp_path_factory.mktemp("ct") / "crop.nrrd"
    sitk.WriteImage(crop, str(path))
    return path


def _mode(base: int) -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return base & ~mask


def _zip_folder(folder: Path, archive: Path, compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(archive, "w", compression) as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f.name)
    return archive


def _segment(image: Path, model: Path, out: Path) -> int:
    return main(["segment", str(image), "-m", str(model), "-o", str(out), "--device", "cpu", "--no-tta",
                 "--progress", "none"])


# ---------------------------------------------------------------- row 7: one safe zip reader
def test_segment_zip_bomb_is_refused_before_reading(tmp_path, ct_crop, capsys):
    folder = threshold_bundle().save(tmp_path / "m")
    doc = (folder / "model.json").read_text()
    # Valid JSON (whitespace is allowed) that unpacks to 40 MB from a few kB: before, it was read whole.
    (folder / "model.json").write_text(doc[:-2] + " " * (40 << 20) + doc[-2:])
    archive = _zip_folder(folder, tmp_path / "bomb.zip", zipfile.ZIP_DEFLATED)
    assert archive.stat().st_size < 200_000
    with pytest.raises(InputError, match="zip bomb"):
        load_bundle(archive)
    assert _segment(ct_crop, archive, tmp_path / "out.nii.gz") == 2
    assert "zip bomb" in capsys.readouterr().err and not (tmp_path / "out.nii.gz").exists()


def test_segment_zip_with_traversal_entry_is_refused(tmp_path):
    folder = threshold_bundle().save(tmp_path / "m")
    archive = _zip_folder(folder, tmp_path / "m.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("../escape.txt", b"x")
    with pytest.raises(InputError, match=r"outside the folder \('..'\)"):
        load_bundle(archive)


# ---------------------------------------------------------------- row 18: corrupt zips
def _corrupt_crc(archive: Path, member: str) -> None:
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(member)
    data = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0xFF
    archive.write_bytes(bytes(data))


def _lie_about_size(archive: Path, member: str) -> None:
    """Shrink the sizes in the central directory entry of `member` (a stored entry)."""
    data = bytearray(archive.read_bytes())
    name = member.encode()
    at = 0
    while True:
        at = data.index(b"PK\x01\x02", at)
        length = int.from_bytes(data[at + 28:at + 30], "little")
        if bytes(data[at + 46:at + 46 + length]) == name:
            break
        at += 4
    for offset in (20, 24):  # compressed, uncompressed size
        size = int.from_bytes(data[at + offset:at + offset + 4], "little")
        data[at + offset:at + offset + 4] = (size // 2).to_bytes(4, "little")
    archive.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_corrupt_crc, _lie_about_size])
def test_corrupt_zip_is_exit_2_for_segment_and_import(tmp_path, ct_crop, capsys, damage):
    archive = _zip_folder(threshold_bundle().save(tmp_path / "m"), tmp_path / "m.zip")
    damage(archive, "weights.safetensors")
    assert _segment(ct_crop, archive, tmp_path / "out.nii.gz") == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and str(archive) in err and "Traceback" not in err
    assert main(["models", "import", str(archive)]) == 2
    assert "corrupt" in capsys.readouterr().err


# ---------------------------------------------------------------- row 12: non-finite numbers
@pytest.mark.parametrize("field, text", [
    ("mean", "NaN"), ("std", "Infinity"), ("clip", "[NaN, 1000]"), ("target_spacing", "[NaN, 1.5, 1.5]"),
    ("target_spacing", "[1e999, 1.5, 1.5]"),
])
def test_non_finite_numbers_in_model_json_are_exit_2(tmp_path, ct_crop, capsys, field, text):
    folder = threshold_bundle().save(tmp_path / "m")
    doc = json.loads((folder / "model.json").read_text())
    where = doc["preprocessing"] if field == "target_spacing" else doc["preprocessing"]["normalization"][0]
    where[field] = "@@"
    (folder / "model.json").write_text(json.dumps(doc).replace('"@@"', text))
    with pytest.raises(InputError, match="model.json"):
        load_bundle(folder)
    assert _segment(ct_crop, folder, tmp_path / "out.nii.gz") == 2
    err = capsys.readouterr().err
    assert "model.json" in err and "Traceback" not in err and not (tmp_path / "out.nii.gz").exists()


def test_non_finite_numbers_in_a_catalog_are_refused():
    text = catalog_json([catalog_entry("m1", b"zip bytes", ["https://example.org/m1.zip"])])
    doc = json.loads(text)
    doc["models"][0]["min_gpu_memory_gb"] = "@@"
    for bad in ("NaN", "Infinity", "1e999"):
        with pytest.raises(InputError, match="not valid JSON|finite"):
            parse_catalog(json.dumps(doc).replace('"@@"', bad), "cat.json")
    assert parse_catalog(json.dumps(doc).replace('"@@"', "4.5"), "cat.json")[0].min_gpu_memory_gb == 4.5


@pytest.mark.parametrize("spacing", [["nan", "1", "1"], ["inf", "1", "1"], ["0", "1", "1"]])
def test_train_with_non_finite_spacing_is_exit_2(tmp_path, breast_dataset, capsys, spacing):
    out = tmp_path / "model"
    rc = main(["train", str(breast_dataset), "-o", str(out), "--spacing", *spacing, "--device", "cpu",
               "--progress", "none", "--epochs", "1", "--iterations", "1", "--work-dir", str(tmp_path / "work")])
    err = capsys.readouterr().err
    assert rc == 2 and "--spacing must be three finite sizes > 0" in err and "Traceback" not in err
    assert not out.exists()


# ---------------------------------------------------------------- row 10: one id rule
def test_import_id_with_a_newline_is_refused(tmp_path, home, capsys):
    folder = threshold_bundle().save(tmp_path / "m")
    assert main(["models", "import", str(folder), "--id", "evil\n"]) == 2
    assert "invalid model id" in capsys.readouterr().err
    assert not (home / "models").exists() or list((home / "models").iterdir()) == []
    doc = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps(dict(doc, id="evil\n")))
    with pytest.raises(InputError, match=r"id: 'evil\\n' does not match"):
        load_bundle(folder)


def test_catalog_id_rule_is_the_same(tmp_path):
    for bad in ("evil\n", "Upper", "con"):
        text = catalog_json([catalog_entry(bad, b"zip bytes", ["https://example.org/m1.zip"])])
        with pytest.raises(InputError, match="id"):
            parse_catalog(text, "cat.json")


# ---------------------------------------------------------------- shareable imports
def test_import_strips_absolute_paths(tmp_path, home):
    bundle = threshold_bundle()
    doc = bundle.spec.to_json()
    doc["description"] = "made from /home/jane/Smith_J/scans"
    doc["provenance"]["training"] = {"dataset": "/home/jane/Smith_J"}
    folder = bundle.save(tmp_path / "m")
    (folder / "model.json").write_text(json.dumps(doc))
    installed = import_model(folder)
    text = (installed / "model.json").read_text()
    assert "/home/jane" not in text and "<path removed>" in text


# ---------------------------------------------------------------- atomic writers
def test_checkpoint_gets_the_usual_file_mode(tmp_path):
    path = tmp_path / checkpoint.LATEST
    checkpoint.save_atomic({"epoch": torch.tensor(1)}, path)
    assert stat.S_IMODE(path.stat().st_mode) == _mode(0o666)  # not mkstemp's 0600
    assert int(checkpoint.load(path)["epoch"]) == 1


def test_atomic_writers_leave_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "a.nii.gz"
    atomic.write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
            tmp.write_bytes(b"new")
            raise RuntimeError("cancelled")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "old.txt").write_text("x")
    with atomic.atomic_folder(folder) as tmp:
        (tmp / "new.txt").write_text("y")
    assert [p.name for p in folder.iterdir()] == ["new.txt"] and stat.S_IMODE(folder.stat().st_mode) == _mode(0o777)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "f"]
    assert atomic.sha256_file(target) == hashlib.sha256(b"old").hexdigest()
