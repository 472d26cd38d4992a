"""Batch segmentation sharded over torchrun ranks, and `--skip-done` trusting only the engine's run records.

Four real scans (a breast MR, crops of the brain MR, the lung CT and the ICBM T1) and a tiny real
bundle (a MedNeXt computing a z-score threshold). Two CPU ranks are started by the real torchrun
(`python -m torch.distributed.run --standalone`); the single-process CLI is the reference.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import mednextv2
from mednextv2.cli import main
from mednextv2.inference.pipeline import segment_folder
from mednextv2.inference.run_record import RECORD_FOLDER
from segment_fixtures import one_torch_thread, threshold_bundle  # noqa: F401 (autouse)

CASES = ("brain", "breast", "lung", "tissue")
RANK_OF = {"brain": 0, "breast": 1, "lung": 0, "tissue": 1}  # round-robin over the sorted case names
FLAGS = ["--device", "cpu", "--no-tta"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory, data_dir) -> Path:
    folder = tmp_path_factory.mktemp("shard") / "cases"
    folder.mkdir()
    read = lambda rel: sitk.ReadImage(str(data_dir / rel))  # noqa: E731
    sitk.WriteImage(read("mr-breast/breast1_image.nrrd"), str(folder / "breast.nrrd"))
    sitk.WriteImage(read("mr-brain-lesion/brain1_image.nrrd")[70:150, 60:150, 4:20], str(folder / "brain.nrrd"))
    sitk.WriteImage(read("ct-lung/lung1_image.nrrd")[180:300, 200:300, 16:32], str(folder / "lung.nrrd"))
    sitk.WriteImage(read("mr-brain-tissue/icbm152_2009a_t1.nii.gz")[60:140, 80:160, 80:100],
                    str(folder / "tissue.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def zscore_model(tmp_path_factory) -> Path:
    return threshold_bundle((0.5,), normalization=[{"scheme": "zscore"}]).save(tmp_path_factory.mktemp("m") / "model")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cases, zscore_model) -> Path:
    """One process, no torchrun: the results every sharded run must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("reference")
    assert main(["segment", str(cases), "-m", str(zscore_model), "-o", str(out), "--progress", "none"] + FLAGS) == 0
    return out


def _input(cases: Path, case: str) -> Path:
    return next(p for p in cases.iterdir() if p.name.split(".")[0] == case)


def _torchrun(cases: Path, out: Path, model: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(Path(mednextv2.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "-m", "mednextv2", "segment", str(cases), "-o", str(out), "-m", str(model)] + FLAGS + list(extra)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _case_lines(stderr: str) -> dict:
    """case -> [(rank, the rest of its log line)], from the ranks' prefixed `case i/n: NAME ...` lines."""
    found: dict = {}
    for m in re.finditer(r"^\[rank (\d)/2\] INFO mednextv2\.inference\.pipeline: case \d/\d: (\w+)(.*)$", stderr, re.M):
        found.setdefault(m.group(2), []).append((int(m.group(1)), m.group(3)))
    return found


def _record(out: Path, case: str) -> dict:
    return json.loads((out / RECORD_FOLDER / f"{case}.json").read_text(encoding="utf-8"))


def _stamp(path: Path):
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def _same_as_reference(out: Path, reference: Path, cases: Path, case: str) -> None:
    """The same labels and segment fields as the one-process run (the files differ only in pynrrd's
    timestamp comment), on exactly the input's grid."""
    name = f"{case}.seg.nrrd"
    result, expected = sitk.ReadImage(str(out / name)), sitk.ReadImage(str(reference / name))
    assert np.array_equal(sitk.GetArrayViewFromImage(result), sitk.GetArrayViewFromImage(expected)), case
    assert {k: result.GetMetaData(k) for k in result.GetMetaDataKeys()} == {
        k: expected.GetMetaData(k) for k in expected.GetMetaDataKeys()}
    assert sitk.GetArrayViewFromImage(result).any(), case  # a result with structure in it
    image = sitk.ReadImage(str(_input(cases, case)))
    assert result.GetSize() == image.GetSize() and result.GetOrigin() == image.GetOrigin()
    assert result.GetSpacing() == image.GetSpacing() and result.GetDirection() == image.GetDirection()


@pytest.mark.slow
def test_two_ranks_write_each_case_once_as_one_process_and_skip_what_is_recorded(tmp_path, cases, zscore_model,
                                                                                  reference):
    out = tmp_path / "out"
    out.mkdir()
    done = _torchrun(cases, out, zscore_model, "--progress", "json")
    assert done.returncode == 0, done.stderr[-4000:]
    progress = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert progress and {r["rank"] for r in progress} == {0, 1}
    # Every case segmented once, by the rank the split gives it, recorded by that rank.
    lines = _case_lines(done.stderr)
    assert {case: [rank for rank, _ in found] for case, found in lines.items()} == {c: [RANK_OF[c]] for c in CASES}
    assert sorted(p.name for p in out.iterdir()) == [RECORD_FOLDER] + [f"{c}.seg.nrrd" for c in CASES]
    assert sorted(p.name for p in (out / RECORD_FOLDER).iterdir()) == [f"{c}.json" for c in CASES]
    for case in CASES:
        _same_as_reference(out, reference, cases, case)
        record = _record(out, case)
        assert (record["rank"], record["world_size"]) == (RANK_OF[case], 2)
        assert record["inputs"][0]["name"] == _input(cases, case).name

    # Rerun with --skip-done after: one output deleted, one output left without its record.
    stamps = {c: _stamp(out / f"{c}.seg.nrrd") for c in CASES}
    finished = {c: _record(out, c)["finished"] for c in CASES}
    (out / "brain.seg.nrrd").unlink()
    (out / RECORD_FOLDER / "tissue.json").unlink()
    again = _torchrun(cases, out, zscore_model, "--progress", "none", "--skip-done")
    assert again.returncode == 0, again.stderr[-4000:]
    lines = _case_lines(again.stderr)
    for case in ("breast", "lung"):  # recorded and unchanged: skipped, not rewritten
        assert lines[case] == [(RANK_OF[case], f" done (run record {out / RECORD_FOLDER / case}.json), skipped")]
        assert _stamp(out / f"{case}.seg.nrrd") == stamps[case] and _record(out, case)["finished"] == finished[case]
    assert lines["brain"] == [(0, " (output brain.seg.nrrd is missing)")]
    assert lines["tissue"] == [(1, " (no run record)")]  # its output file alone is not trusted
    assert _stamp(out / "tissue.seg.nrrd") != stamps["tissue"]
    for case in ("brain", "tissue"):
        _same_as_reference(out, reference, cases, case)
        assert _record(out, case)["finished"] > finished[case]
    assert "1 case(s) skipped as done" in again.stderr and not again.stdout


@pytest.mark.slow
def test_a_failing_case_fails_the_run_and_leaves_no_half_written_file(tmp_path, cases, zscore_model):
    folder = tmp_path / "cases"
    folder.mkdir()
    for case in ("brain", "breast"):
        shutil.copyfile(_input(cases, case), folder / _input(cases, case).name)
    (folder / "broken.nii.gz").write_bytes(_input(cases, "tissue").read_bytes()[:40000])  # cut short
    out = tmp_path / "out"
    out.mkdir()
    done = _torchrun(folder, out, zscore_model, "--progress", "none")
    assert done.returncode != 0
    assert f"[rank 0/2] mednextv2: error: {folder / 'broken.nii.gz'}: the file is truncated" in done.stderr
    # Rank 0 (brain, broken) stopped at broken; whatever finished is whole and recorded, nothing else is left.
    outputs = sorted(p.name for p in out.iterdir() if p.name != RECORD_FOLDER)
    assert "broken.seg.nrrd" not in outputs and not [n for n in outputs if n.startswith(".")]
    assert "brain.seg.nrrd" in outputs
    recorded = {p.name for p in (out / RECORD_FOLDER).iterdir()}
    assert "brain.json" in recorded and recorded <= {n.replace(".seg.nrrd", ".json") for n in outputs}


def test_skip_done_redoes_a_changed_output_another_model_a_changed_input_and_other_options(
        tmp_path, cases, zscore_model, reference, caplog):
    folder = tmp_path / "cases"
    shutil.copytree(cases, folder)
    out = tmp_path / "out"
    shutil.copytree(reference, out)  # the records name files, not folders: a copy is still recorded
    stamps = {c: _stamp(out / f"{c}.seg.nrrd") for c in CASES}
    with open(out / "lung.seg.nrrd", "ab") as f:  # an edited result
        f.write(b"\n")
    one = tmp_path / "one"  # breast segmented again by another model, into the same folder
    one.mkdir()
    shutil.copyfile(folder / "breast.nrrd", one / "breast.nrrd")
    other = threshold_bundle((1.5,), normalization=[{"scheme": "zscore"}])
    segment_folder(one, other, out, device="cpu", tta=False)
    assert (out / "breast.seg.nrrd").read_bytes() != (reference / "breast.seg.nrrd").read_bytes()
    image = sitk.ReadImage(str(folder / "tissue.nii.gz"))  # a changed input
    sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32) * 0.5, str(folder / "tissue.nii.gz"))
    caplog.set_level("INFO", logger="mednextv2")
    args = ["segment", str(folder), "-m", str(zscore_model), "-o", str(out), "--progress", "none", "--skip-done"]
    assert main(args + FLAGS) == 0
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert f"brain done (run record {out / RECORD_FOLDER / 'brain.json'}), skipped" in said
    assert _stamp(out / "brain.seg.nrrd") == stamps["brain"]
    assert "lung (output lung.seg.nrrd changed since it was written)" in said
    assert "breast (recorded with another model (known-threshold, digest " in said
    assert "tissue (its input changed since it was recorded)" in said
    for case in ("brain", "breast", "lung"):
        _same_as_reference(out, reference, folder, case)
    assert _record(out, "tissue")["inputs"][0]["sha256"] != json.loads(
        (reference / RECORD_FOLDER / "tissue.json").read_text(encoding="utf-8"))["inputs"][0]["sha256"]
    caplog.clear()
    assert main(args + ["--fast"] + FLAGS) == 0  # other options: every case again
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert all(f"{c} (recorded with other options (fast))" in said for c in CASES), said
    assert all(_record(out, c)["run"]["options"]["fast"] for c in CASES)


def _hashes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_files_the_engine_did_not_record_are_never_trusted_nor_taken(tmp_path, cases, zscore_model, reference,
                                                                     monkeypatch, capsys):
    base = ["-m", str(zscore_model), "--progress", "none"] + FLAGS
    # A user's file with an output's name and no record: segmented again, replaced as batch mode does.
    out = tmp_path / "out"
    out.mkdir()
    (out / "brain.seg.nrrd").write_bytes(b"my own segmentation")
    assert main(["segment", str(cases), "-o", str(out), "--skip-done"] + base) == 0
    for case in CASES:
        _same_as_reference(out, reference, cases, case)
    # A file of the user's in the record folder, with a record's name: refused before any work.
    (out / RECORD_FOLDER / "lung.json").write_text('{"notes": "mine"}', encoding="utf-8")
    before = _hashes(out)
    assert main(["segment", str(cases), "-o", str(out), "--skip-done"] + base) == 2
    assert f"{out / RECORD_FOLDER / 'lung.json'} is not a run record the engine wrote" in capsys.readouterr().err
    assert _hashes(out) == before
    # Into the input folder, a user's breast.seg.nrrd beside breast.nrrd: the usual refusal, file untouched.
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copyfile(cases / "breast.nrrd", folder / "breast.nrrd")
    (folder / "breast.seg.nrrd").write_bytes(b"my own segmentation")
    before = _hashes(folder)
    for extra in ([], ["--skip-done"]):
        assert main(["segment", str(folder), "-o", str(folder)] + extra + base) == 2
        assert "are both case breast" in capsys.readouterr().err and _hashes(folder) == before


def test_torchrun_refusals_and_a_rank_without_cases(tmp_path, cases, zscore_model, monkeypatch, capsys):
    base = ["-m", str(zscore_model), "--progress", "none"] + FLAGS
    out = tmp_path / "out"
    out.mkdir()
    assert main(["segment", str(cases / "breast.nrrd"), "-o", str(out / "b.seg.nrrd"), "--skip-done"] + base) == 2
    assert "--skip-done needs a folder of cases" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(["segment", str(cases / "breast.nrrd"), "-o", str(out / "b.seg.nrrd")] + base) == 2
    assert "8 ranks (torchrun) share out the cases of a folder" in capsys.readouterr().err
    folder = tmp_path / "scans"
    shutil.copytree(cases, folder)
    before = _hashes(folder)
    assert main(["segment", str(folder), "-o", str(folder)] + base) == 2
    assert "is the input folder: with 8 ranks" in capsys.readouterr().err and _hashes(folder) == before
    # Rank 5 of 8 over four cases has none: it writes nothing and succeeds.
    assert main(["segment", str(cases), "-o", str(out)] + base) == 0
    assert list(out.iterdir()) == []


def test_each_rank_takes_the_gpu_of_its_local_rank_and_refuses_to_share_one(tmp_path, cases, zscore_model, monkeypatch,
                                                                             capsys):
    import torch

    from mednextv2.train import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.device_for("auto", distributed.DistContext(3, 4, 1)) == torch.device("cuda", 1)
    assert distributed.device_for("cpu", distributed.DistContext(3, 4, 1)) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["segment", str(cases), "-o", str(out), "-m", str(zscore_model), "--device", "cuda"]) == 2
    assert "rank 1 (local rank 1) has no GPU of its own: this machine has 1" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_a_file_where_the_records_go_is_refused(tmp_path, cases, zscore_model, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / RECORD_FOLDER).write_text("my notes", encoding="utf-8")
    assert main(["segment", str(cases), "-o", str(out), "-m", str(zscore_model), "--progress", "none"] + FLAGS) == 2
    assert f"{out / RECORD_FOLDER} is not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [RECORD_FOLDER]
    (out / RECORD_FOLDER).unlink()
    (out / RECORD_FOLDER).mkdir()
    record = {"kind": "mednextv2 segment run record", "format_version": 99}
    (out / RECORD_FOLDER / "brain.json").write_text(json.dumps(record), encoding="utf-8")
    assert main(["segment", str(cases), "-o", str(out), "-m", str(zscore_model), "--progress", "none"] + FLAGS) == 2
    assert "run record format 99, this engine reads 1" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [RECORD_FOLDER]


def test_a_ranks_progress_names_it_as_a_bar_and_as_json():
    import io

    from mednextv2.progress import BarProgress, JsonProgress, with_rank

    bar, lines = io.StringIO(), io.StringIO()
    with_rank(BarProgress(bar), 3)("predict", 0.5, "tile 2/4")
    with_rank(JsonProgress(lines), 3)("predict", 0.5, "tile 2/4", tiles_done=2)
    assert "rank 3 predict [" in bar.getvalue()
    assert json.loads(lines.getvalue()) == {"stage": "predict", "fraction": 0.5, "eta_s": None, "message": "tile 2/4",
                                            "rank": 3, "tiles_done": 2}


def test_skip_done_keeps_maps_and_statistics_of_recorded_cases(tmp_path, cases, zscore_model, caplog, monkeypatch,
                                                                capsys):
    out, maps = tmp_path / "out", tmp_path / "maps"
    out.mkdir()
    maps.mkdir()
    stats = tmp_path / "stats.json"
    base = ["segment", str(cases), "-m", str(zscore_model), "-o", str(out), "--progress", "none", "--skip-done"] + FLAGS
    assert main(base) == 0  # recorded without a map or statistics
    caplog.set_level("INFO", logger="mednextv2")
    assert main(base + ["--uncertainty", str(maps), "--statistics", str(stats)]) == 0
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert all(f"{c} (recorded with other options (uncertainty))" in said for c in CASES), said
    first = json.loads(stats.read_text(encoding="utf-8"))["rows"]
    assert sorted({r["case"] for r in first}) == sorted(CASES)
    assert all(_record(out, c)["statistics"] == [r for r in first if r["case"] == c] for c in CASES)
    stamps = {c: _stamp(maps / f"{c}.uncertainty.nrrd") for c in CASES}
    (maps / "lung.uncertainty.nrrd").unlink()  # a deleted map: that case again, the rest from their records
    caplog.clear()
    stats.unlink()
    assert main(base + ["--uncertainty", str(maps), "--statistics", str(stats)]) == 0
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert "lung (output lung.uncertainty.nrrd is missing)" in said
    assert all(_stamp(maps / f"{c}.uncertainty.nrrd") == stamps[c] for c in CASES if c != "lung")
    assert json.loads(stats.read_text(encoding="utf-8"))["rows"] == first
    # Several ranks cannot share one statistics file: refused before any work.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(base + ["--statistics", str(tmp_path / "ranks.csv")]) == 2
    assert "--statistics with 2 ranks" in capsys.readouterr().err
    assert not (tmp_path / "ranks.csv").exists()
