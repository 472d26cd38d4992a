"""Hostile bundles and model folders, second round: label names that would forge .seg.nrrd
header fields, zip entries that unpack to far more than they hold, `train -o` folders that are
not what they claim, and a folder swap cut short. Each is refused (exit 2) or repaired, with a
message naming the file, and no file the engine did not write is ever deleted."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_train_promise import _hashes, _train, dataset  # noqa: F401

from mednextv2.bundle import Bundle, Label, foreign_entries, load_bundle
from mednextv2.cli import main
from mednextv2.errors import InputError
from mednextv2.inference.export import write_seg_nrrd
from mednextv2.network import MedNeXt
from mednextv2.store.cache import ModelCache
from segment_fixtures import bundle_spec, make_image, threshold_bundle, tiny_config

pytestmark = pytest.mark.usefixtures("home")
REPO = Path(__file__).resolve().parents[1]
HOSTILE_NAMES = ["metal\nSegment0_LabelValue:=2", "tumour\ndata file: ../secret.txt", "blank\n\nline",
                 "back\\slash\\n", "carriage\rreturn", "escape\x1b[2J", "line\u2028separator"]


def _rewrite_model_json(folder: Path, change) -> Path:
    doc = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    change(doc)
    (folder / "model.json").write_text(json.dumps(doc), encoding="utf-8")
    return folder


# ---------------------------------------------------------------- label names
@pytest.mark.parametrize("name", HOSTILE_NAMES[:3] + HOSTILE_NAMES[4:])
def test_label_name_with_control_characters_is_refused_on_load_and_import(tmp_path, name, capsys):
    folder = threshold_bundle().save(tmp_path / "m")
    _rewrite_model_json(folder, lambda doc: doc["labels"][0].update(name=name))
    with pytest.raises(InputError, match=r"labels\[0\]\.name: must be one line of printable text"):
        load_bundle(folder)
    assert main(["models", "import", str(folder)]) == 2
    assert "labels[0].name: must be one line of printable text" in capsys.readouterr().err


def test_terminology_and_channel_texts_with_line_breaks_are_refused(tmp_path):
    folder = threshold_bundle().save(tmp_path / "m")
    _rewrite_model_json(folder, lambda doc: doc["labels"][0]["terminology"]["type"].__setitem__(2, "x\ny"))
    with pytest.raises(InputError, match=r"labels\[0\]\.terminology\.type\[2\]: must be one line"):
        load_bundle(folder)
    _rewrite_model_json(folder, lambda doc: (doc["labels"][0]["terminology"]["type"].__setitem__(2, "Neoplasm"),
                                             doc["channels"][0].update(name="CT\n")))
    with pytest.raises(InputError, match=r"channels\[0\]\.name: must be one line"):
        load_bundle(folder)


def test_seg_nrrd_header_escapes_what_nrrd_cannot_hold(tmp_path):
    # Labels built in code skip model.json's check: the writer itself must never let a name end its line.
    labels = [Label(i + 1, name, (255, 0, 0)) for i, name in enumerate(HOSTILE_NAMES)]
    array = np.zeros((4, 5, 9), np.uint8)
    array[1, 1, 1:1 + len(labels)] = np.arange(1, len(labels) + 1)
    path = write_seg_nrrd(make_image(array), labels, tmp_path / "out.seg.nrrd")
    (tmp_path / "secret.txt").write_bytes(b"\0" * array.size)
    back = sitk.ReadImage(str(path))  # ITK's NRRD reader is teem's, as in Slicer
    assert np.array_equal(sitk.GetArrayFromImage(back), array)
    assert [back.GetMetaData(f"Segment{i}_LabelValue") for i in range(len(labels))] == \
        [str(i + 1) for i in range(len(labels))]
    names = [back.GetMetaData(f"Segment{i}_Name") for i in range(len(labels))]
    # teem unescapes \\ and \n; other control characters became spaces, as teem's own writer does
    assert names[:4] == HOSTILE_NAMES[:4]
    assert names[4:] == ["carriage return", "escape [2J", "line separator"]
    header = path.read_bytes().split(b"\n\n", 1)[0].decode("utf-8")
    assert "\ndata file" not in header and "\nSegment0_LabelValue:=2" not in header


# ---------------------------------------------------------------- zip entries
def test_segment_refuses_a_zip_with_one_bomb_entry_behind_an_acceptable_overall_ratio(tmp_path, data_dir, capsys):
    folder = threshold_bundle().save(tmp_path / "m")
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(folder / "model.json", "model.json")
        zf.writestr("weights.safetensors", b"\0" * (64 << 20))  # ~64 KB packed: 1000x
        zf.writestr(zipfile.ZipInfo("notes.bin"), os.urandom(1 << 20))  # stored: the overall ratio stays ~60x
    out = tmp_path / "out.seg.nrrd"
    code = main(["segment", str(data_dir / "ct-lung" / "lung1_image.nrrd"), "-m", str(archive), "-o", str(out),
                 "--device", "cpu", "--no-tta", "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert re.search(r"bomb\.zip: entry 'weights\.safetensors' unpacks to \d+x its size \(64\.0 MB\): refusing a "
                     r"likely zip bomb", err), err


def test_zip_bundle_weights_are_streamed_not_read_whole_into_memory(tmp_path):
    # A network of 10.6 million parameters: 40 MiB of random weights that no compression shrinks
    # (an extra tensor would be refused: a weights file holds only its network's tensors).
    config = tiny_config().replace(n_channels=72)
    state = {k: torch.rand(v.shape) for k, v in MedNeXt(config).state_dict().items()}
    folder = Bundle.create(bundle_spec(config), [state]).save(tmp_path / "m")
    assert (folder / "weights.safetensors").stat().st_size > 32 << 20
    archive = tmp_path / "m.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f.name)
    bundle = load_bundle(archive)
    tracemalloc.start()
    try:
        loaded = bundle.load_state_dicts()[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in state.items())
    assert peak < 12 << 20, f"{peak / 2 ** 20:.1f} MiB of Python objects for a 32 MiB entry"
    copy = bundle.save(tmp_path / "copy")  # a zip bundle saved as a folder: the same bytes
    with zipfile.ZipFile(archive) as zf:
        assert (copy / "weights.safetensors").read_bytes() == zf.read("weights.safetensors")


# ---------------------------------------------------------------- train -o: a bundle by content, never the base
def _users_bundle_like_folder(folder: Path, weights_name: str = "notes.txt") -> dict:
    """A folder of the user's files beside a model.json that names them (anyone can write one)."""
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes\n", encoding="utf-8")
    (folder / "results.csv").write_text("case,dice\n1,0.9\n", encoding="utf-8")
    (folder / "model.json").write_text(json.dumps({"weights": ["notes.txt", "results.csv"]}), encoding="utf-8")
    return _hashes(folder)


def test_train_refuses_a_folder_whose_model_json_is_forged(dataset, tmp_path, capsys):
    before = _users_bundle_like_folder(tmp_path / "results")
    assert _train(dataset, tmp_path / "results") == 2
    err = capsys.readouterr().err
    assert re.search(r"results holds files that are not a model bundle's \(model\.json \(not a valid "
                     r"model\.json: .*\), notes\.txt, results\.csv\)", err), err
    assert _hashes(tmp_path / "results") == before and not (tmp_path / "results.training").exists()


def test_bundle_content_rule_names_the_first_foreign_file(tmp_path):
    engine = threshold_bundle().save(tmp_path / "engine")
    assert foreign_entries(engine) == []
    # A valid model.json beside weights that are not its network's: the user's own other model.
    other = threshold_bundle(thresholds_hu=(100.0, 300.0)).save(tmp_path / "other")
    shutil.copyfile(other / "weights.safetensors", engine / "weights.safetensors")
    assert re.fullmatch(r"weights\.safetensors \(its tensors are not the recorded network's \(first difference: .*\)\)",
                        foreign_entries(engine)[0])
    (engine / "weights.safetensors").write_bytes(b"my spreadsheet")
    assert foreign_entries(engine)[0].startswith("weights.safetensors (not a valid safetensors file")
    shutil.copyfile(other / "weights.safetensors", engine / "weights.safetensors")
    shutil.copyfile(other / "model.json", engine / "model.json")
    (engine / "metrics.csv").write_text("case,dice\n1,0.9\n", encoding="utf-8")
    assert foreign_entries(engine) == ["metrics.csv (not a training report)"]
    (engine / "metrics.csv").unlink()
    (engine / "sub").mkdir()
    assert foreign_entries(engine) == ["sub"]
    (engine / "sub").rmdir()
    _rewrite_model_json(engine, lambda doc: doc.update(format_version=2))
    assert foreign_entries(engine)[0].startswith("model.json (not a valid model.json: format_version")
    assert foreign_entries(engine)[1:] == ["weights.safetensors"]


def test_train_refuses_a_zip_holding_a_forged_model_json(dataset, tmp_path, capsys):
    _users_bundle_like_folder(tmp_path / "results")
    archive = tmp_path / "results.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((tmp_path / "results").iterdir()):
            zf.write(f, f.name)
    data = archive.read_bytes()
    assert _train(dataset, archive) == 2
    assert "results.zip exists and is not a model bundle zip" in capsys.readouterr().err
    assert archive.read_bytes() == data


@pytest.mark.parametrize("form", ["folder", "zip", "installed id"])
def test_train_refuses_an_output_that_is_the_base_model(dataset, tmp_path, home, form, capsys):  # noqa: F811
    base = threshold_bundle().save(tmp_path / ("base.zip" if form == "zip" else "base"))
    ref, output = str(base), base
    if form == "installed id":
        assert main(["models", "import", str(base), "--id", "my-base"]) == 0
        ref, output = "my-base", home / "models" / "my-base"
    before = _hashes(output) if output.is_dir() else output.read_bytes()
    capsys.readouterr()
    assert main(["train", str(dataset), "-o", str(output), "--base", ref, "--epochs", "1", "--iterations", "1",
                 "--device", "cpu", "--progress", "none"]) == 2
    assert f"is the base model --base {ref}" in capsys.readouterr().err
    assert (_hashes(output) if output.is_dir() else output.read_bytes()) == before


# ---------------------------------------------------------------- a folder swap cut short by a kill
# Runs a command in a child process that dies (os._exit, as from SIGKILL: no cleanup runs) at one
# step of the folder swap: "aside" before the old folder is moved aside, "in" before the new one
# is moved in, "delete" before the old one is deleted.
_KILLED = r"""
import os, shutil, sys
from pathlib import Path
step, name, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
real_replace, real_rmtree = os.replace, shutil.rmtree
def ours(path, end):
    return Path(path).name.startswith("." + name + ".") and Path(path).name.endswith(end)
def replace(a, b):
    if (step == "aside" and ours(b, ".old")) or (step == "in" and Path(b).name == name):
        os._exit(137)
    return real_replace(a, b)
def rmtree(path, *args, **kwargs):
    if step == "delete" and ours(path, ".old"):
        os._exit(137)
    return real_rmtree(path, *args, **kwargs)
os.replace, shutil.rmtree = replace, rmtree
if argv[0] == "save":
    sys.path.insert(0, os.path.join(os.getcwd(), "Testing"))
    from segment_fixtures import threshold_bundle
    threshold_bundle(thresholds_hu=(float(argv[2]),)).save(argv[1])
    sys.exit(0)
from mednextv2.cli import main
sys.exit(main(argv))
"""


def _killed_at(step: str, name: str, *argv) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "core"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", _KILLED, step, name, *map(str, argv)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 137, done.stderr


def _leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _weights(folder: Path) -> bytes:
    return (folder / "weights.safetensors").read_bytes()


def test_models_list_completes_an_install_killed_mid_swap(tmp_path, home, capsys, caplog):  # noqa: F811
    old = threshold_bundle(thresholds_hu=(100.0,)).save(tmp_path / "old")
    new = threshold_bundle(thresholds_hu=(500.0,)).save(tmp_path / "new")
    assert main(["models", "import", str(old), "--id", "mine"]) == 0
    _killed_at("in", "mine", "models", "import", new, "--id", "mine", "--replace")
    models = home / "models"
    assert not (models / "mine").exists()  # on the code before, the model was gone for good from here
    assert [n.split(".")[-1] for n in _leftovers(models)] == sorted(["new", "old", "swap"])
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    assert re.search(r"^mine ", capsys.readouterr().out, re.M)
    assert "mine: completed an interrupted replacement; mine is the new version" in caplog.text
    assert _weights(models / "mine") == _weights(new) and _leftovers(models) == []
    assert [m.id for m in ModelCache.open().installed()] == ["mine"]


def test_an_incomplete_new_model_is_undone_and_the_old_one_put_back(tmp_path, home, caplog):  # noqa: F811
    old = threshold_bundle(thresholds_hu=(100.0,)).save(tmp_path / "old")
    new = threshold_bundle(thresholds_hu=(500.0,)).save(tmp_path / "new")
    assert main(["models", "import", str(old), "--id", "mine"]) == 0
    _killed_at("in", "mine", "models", "import", new, "--id", "mine", "--replace")
    models = home / "models"
    incoming = next(p for p in models.iterdir() if p.name.endswith(".new"))
    (incoming / "weights.safetensors").write_bytes(b"cut short")  # as if the disk lost its tail
    assert ModelCache.open().is_installed("mine")  # any use of the id finds the swap
    assert "mine: undid an interrupted replacement; the new version was incomplete, the previous one is back" \
        in caplog.text
    assert _weights(models / "mine") == _weights(old) and _leftovers(models) == []


@pytest.mark.parametrize("step, said", [
    ("aside", "an interrupted replacement had not started; kept model and deleted the unfinished new version"),
    ("delete", "an interrupted replacement had finished; deleted the previous version left in"),
])
def test_a_bundle_save_killed_before_or_after_the_swap_is_cleaned_up(tmp_path, step, said, caplog):
    from mednextv2.train.output import recover_interrupted_swap

    target = threshold_bundle(thresholds_hu=(100.0,)).save(tmp_path / "model")
    first = _weights(target)
    _killed_at(step, "model", "save", target, 500.0)
    assert len(_leftovers(tmp_path)) == 2
    recover_interrupted_swap(target)
    assert said in caplog.text and _leftovers(tmp_path) == []
    assert (_weights(target) == first) == (step == "aside") and load_bundle(target).id == "known-threshold"


def test_a_swap_in_progress_in_a_live_process_is_left_alone(tmp_path):
    from mednextv2 import atomic

    target = threshold_bundle().save(tmp_path / "model")
    with atomic.atomic_folder(target) as tmp:
        (tmp / "model.json").write_text("{}", encoding="utf-8")
        assert atomic.recover_swaps(target, lambda p: True) == []
        assert tmp.is_dir() and len(_leftovers(tmp_path)) == 2
    assert _leftovers(tmp_path) == [] and (target / "model.json").read_text(encoding="utf-8") == "{}"


def test_train_finishes_a_swap_its_killed_predecessor_left(dataset, tmp_path, caplog):  # noqa: F811
    target = threshold_bundle(thresholds_hu=(100.0,)).save(tmp_path / "model")
    _killed_at("in", "model", "save", target, 500.0)
    assert not target.exists()
    assert _train(dataset, target, "--threads", "1") == 0
    assert "model: completed an interrupted replacement; model is the new version" in caplog.text
    assert _leftovers(tmp_path) == [] and load_bundle(target).spec.provenance.training["epochs"] == 1


def test_a_failed_swap_leaves_the_old_folder_and_no_journal(tmp_path, monkeypatch):
    from mednextv2 import atomic

    target, new = tmp_path / "model", tmp_path / "staged"
    target.mkdir()
    (target / "old.txt").write_text("old", encoding="utf-8")
    new.mkdir()
    (new / "new.txt").write_text("new", encoding="utf-8")
    real = os.replace

    def refuse_moving_in(a, b):
        if Path(b) == target and Path(a).name.endswith(".new"):
            raise PermissionError(13, "Permission denied", str(b))
        return real(a, b)

    monkeypatch.setattr(atomic.os, "replace", refuse_moving_in)
    with pytest.raises(PermissionError):
        atomic.replace_folder(new, target)
    assert (target / "old.txt").read_text(encoding="utf-8") == "old" and (new / "new.txt").is_file()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("damage, why", [
    (lambda data: data[:-10], r"ends early|bytes beyond"),
    (lambda data: data + b"\0" * 8, r"8 bytes beyond the last tensor"),
    (lambda data: (10 ** 9).to_bytes(8, "little") + data[8:], r"a header of 1000000000 bytes"),
    (lambda data: data[:8] + data[8:].replace(b'"F32"', b'"F99"', 1), r"header entry 'F99'"),
])
def test_a_damaged_safetensors_entry_in_a_zip_is_refused_by_name(tmp_path, damage, why):
    folder = threshold_bundle().save(tmp_path / "m")
    archive = tmp_path / "m.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(folder / "model.json", "model.json")
        zf.writestr("weights.safetensors", damage((folder / "weights.safetensors").read_bytes()))
    with pytest.raises(InputError, match=r"m\.zip: weights file weights\.safetensors is not a valid safetensors file "
                                         r"\(.*(" + why + ")"):
        load_bundle(archive).build_models()


def test_segment_finds_a_bundle_folder_whose_swap_a_killed_run_left(tmp_path, caplog):
    from mednextv2.store.catalog import resolve_model

    target = threshold_bundle(thresholds_hu=(100.0,)).save(tmp_path / "model")
    _killed_at("in", "model", "save", target, 500.0)
    assert resolve_model(str(target)) == target.resolve()
    assert "model: completed an interrupted replacement" in caplog.text and _leftovers(tmp_path) == []


def test_a_zip_bundle_whose_weights_bytes_changed_is_refused_by_its_crc(tmp_path):
    folder = threshold_bundle().save(tmp_path / "m")
    archive = tmp_path / "m.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.write(folder / "model.json", "model.json")
        zf.write(folder / "weights.safetensors", "weights.safetensors")
    data = bytearray(archive.read_bytes())
    weights = (folder / "weights.safetensors").read_bytes()
    at = bytes(data).index(weights) + len(weights) - 4  # inside the last tensor: header and sizes stay valid
    data[at] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"m\.zip is corrupt \(entry weights\.safetensors: .*CRC"):
        load_bundle(archive).load_state_dicts()


def test_leftovers_of_an_earlier_version_without_a_journal_are_reported_not_touched(tmp_path, home, caplog):  # noqa: F811
    from mednextv2.train.output import recover_interrupted_swap

    old = threshold_bundle().save(tmp_path / ".model.0123456789ab.old")  # named as engines without a journal named it
    before = _hashes(old)
    recover_interrupted_swap(tmp_path / "model")
    assert re.search(r"\.model\.0123456789ab\.old: the previous version of model, left by an interrupted run of an "
                     r"earlier mednextv2; not touched", caplog.text)
    assert _hashes(old) == before and not (tmp_path / "model").exists()
    caplog.clear()
    models = home / "models"
    threshold_bundle().save(models / ".mine.ba9876543210.tmp")
    ModelCache.open().installed()
    assert ".mine.ba9876543210.tmp: the unfinished new version of mine" in caplog.text
