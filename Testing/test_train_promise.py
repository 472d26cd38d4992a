"""`train -o` never replaces what the engine did not write (docs/promise.md).

The dataset is a copy of the real breast MR and its label; the user's files are hashed before and
after. On the code before the fix each refused command below trained for a few seconds, exit 0,
and the output folder's whole contents (or the dataset) were gone.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from mednextv2.bundle import load_bundle
from mednextv2.cli import main
from mednextv2.errors import InputError
from segment_fixtures import one_torch_thread, threshold_bundle  # noqa: F401

TINY = ["--preset", "v2-tiny", "--epochs", "1", "--iterations", "1", "--patch", "16", "32", "32",
        "--device", "cpu", "--progress", "none"]


def _hashes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def dataset(breast_dataset):
    return breast_dataset


@pytest.fixture()
def users_folder(tmp_path):
    folder = tmp_path / "thesis"
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.txt").write_text("chapter 1\n", encoding="utf-8")
    (folder / "sub" / "data.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    return folder


def _train(dataset, output, *extra) -> int:
    return main(["train", str(dataset), "-o", str(output), *TINY, *map(str, extra)])


def test_output_folder_with_the_users_files_is_refused(dataset, users_folder, capsys):  # row 1
    before = _hashes(users_folder)
    assert _train(dataset, users_folder) == 2
    err = capsys.readouterr().err
    assert str(users_folder) in err and "thesis.txt" in err
    assert _hashes(users_folder) == before
    assert not users_folder.with_name("thesis.training").exists()  # refused before any work


def test_output_equal_to_the_dataset_is_refused(dataset, capsys):  # row 2
    before = _hashes(dataset)
    assert _train(dataset, dataset) == 2
    assert "dataset" in capsys.readouterr().err
    assert _hashes(dataset) == before


def test_output_holding_or_inside_the_dataset_is_refused(dataset, tmp_path):
    before = _hashes(tmp_path)
    assert _train(dataset, tmp_path) == 2
    assert _train(dataset, dataset / "model") == 2
    assert _hashes(tmp_path) == before and not (dataset / "model").exists()


def test_output_file_or_foreign_zip_is_refused(dataset, users_folder):
    before = _hashes(users_folder)
    assert _train(dataset, users_folder / "thesis.txt") == 2
    shutil.make_archive(str(users_folder / "backup"), "zip", users_folder / "sub")
    zipped = _hashes(users_folder)
    assert _train(dataset, users_folder / "backup.zip") == 2
    assert _hashes(users_folder) == zipped and {k: zipped[k] for k in before} == before


def test_work_dir_holding_the_users_files_is_refused(dataset, users_folder, tmp_path):
    before = _hashes(users_folder)
    assert _train(dataset, tmp_path / "model", "--work-dir", users_folder) == 2
    assert _train(dataset, tmp_path / "model", "--work-dir", dataset) == 2
    assert _hashes(users_folder) == before and not (tmp_path / "model").exists()


def test_a_bundle_the_engine_wrote_is_replaced_but_not_a_users_file_in_it(dataset, tmp_path):
    bundle = threshold_bundle().save(tmp_path / "model")
    assert _train(dataset, bundle, "--threads", "1") == 0  # retraining into an earlier bundle
    assert load_bundle(bundle).spec.to_json()["provenance"]["training"]["epochs"] == 1
    assert sorted(p.name for p in bundle.iterdir()) == ["metrics.csv", "model.json", "training_curve.png",
                                                         "weights.safetensors"]
    (bundle / "notes.txt").write_text("my notes\n", encoding="utf-8")
    before = _hashes(bundle)
    shutil.rmtree(tmp_path / "model.training")
    assert _train(dataset, bundle) == 2
    assert _hashes(bundle) == before


def test_the_bundle_swap_itself_never_deletes_a_foreign_file(users_folder):
    before = _hashes(users_folder)
    with pytest.raises(InputError, match="thesis.txt"):
        threshold_bundle().save(users_folder)
    assert _hashes(users_folder) == before


def test_train_refusals_leave_no_work_folder_behind(dataset, tmp_path, capsys):
    """A refusal writes nothing: not even an empty OUTPUT.training folder."""
    bad_label = tmp_path / "bad"
    bad_label.mkdir()
    shutil.copyfile(dataset / "breast1_image.nrrd", bad_label / "breast1_image.nrrd")
    (bad_label / "breast1_label.nrrd").write_bytes(b"NRRD0004\nnot a label\n")
    refusals = [(tmp_path / "no-such-dataset", []), (dataset, ["--val-cases", "nobody"]), (bad_label, []),
                (dataset, ["--val-fraction", "1"])]
    for i, (source, extra) in enumerate(refusals):
        out = tmp_path / f"model{i}"
        assert _train(source, out, *extra) == 2, (source, extra)
        assert "Traceback" not in capsys.readouterr().err
        assert not out.exists() and not out.with_name(out.name + ".training").exists(), (source, extra)
    # Parent folders the run would have made for the work folder are not left behind either.
    assert _train(dataset, tmp_path / "fresh" / "deeper" / "model", "--val-cases", "nobody") == 2
    assert not (tmp_path / "fresh").exists()
    # A work folder that was there before the refusal stays.
    kept = tmp_path / "model-kept.training"
    kept.mkdir()
    assert _train(dataset, tmp_path / "model-kept", "--val-cases", "nobody") == 2
    assert kept.is_dir()


def test_a_model_trained_from_scratch_says_what_is_true(dataset, tmp_path):
    """Title, label names and description of a from-scratch model without validation."""
    from mednextv2.bundle import Label
    from mednextv2.inference import export

    # The label map came from `mednextv2 segment` (then corrected): its label table names value 1.
    table = export.label_table([Label(value=1, name="lesion", color=(255, 0, 0))])
    (dataset / "breast1_label.labels.json").write_text(__import__("json").dumps(table), encoding="utf-8")
    assert _train(dataset, tmp_path / "model") == 0
    spec = load_bundle(tmp_path / "model").spec
    assert [lab.name for lab in spec.labels] == ["lesion"]
    assert "fine-tuned" not in spec.title and "trained from scratch" in spec.title and "lesion" in spec.title
    assert "{}" not in spec.description and "no held-out validation" in spec.description
    assert "trained from scratch (v2-tiny)" in spec.description.lower() and "1 case(s) of dataset" in spec.description
    # Names from a dataset.json beside the pairs, when the folder has one.
    (dataset / "breast1_label.labels.json").unlink()
    (dataset / "dataset.json").write_text('{"labels": {"background": 0, "tumour": 1}}', encoding="utf-8")
    assert _train(dataset, tmp_path / "model2") == 0
    assert [lab.name for lab in load_bundle(tmp_path / "model2").spec.labels] == ["tumour"]
