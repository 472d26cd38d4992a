"""`mednextv2 demo` end to end, with a short budget: data from inside the package, outputs written.

Its quality at the default 5-minute budget is reported in the README; the learning itself is
checked with a threshold in test_train_run.py.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nrrd
import SimpleITK as sitk

import mednextv2
from mednextv2.train import demo


# The README's figures (grey 0.83, white 0.85) need the demo's full 5 minutes. In this test's 30 s
# (one 50-step epoch, 1 thread) the model learns brain against background first and calls the
# brain grey matter: measured grey-matter Dice 0.68-0.72 on 2 cores at load 2-13 (white 0.02-0.41,
# too early for a floor). A model that learnt nothing scores far lower: with the time budget spent
# before training starts (--minutes 0.1 under load) grey was 0.09-0.10; an all-grey volume gives
# 0.28, all background or swapped labels ~0. At 12 s (the former budget) a load of 12 already gave
# 0.46, hence 30 s. Learning both tissues is checked with fixed epochs in test_train_run.py.
DEMO_MINUTES = 0.5
MIN_GREY_DICE = 0.5


def test_demo_data_ship_inside_the_package_with_their_notes():
    package = Path(mednextv2.__file__).resolve().parent
    assert demo.DATA.resolve().is_relative_to(package)
    for name in (demo.T1, demo.TISSUE):
        assert (demo.DATA / name).stat().st_size < 400_000
    notes = (package / "data" / "README.md").read_text(encoding="utf-8")
    assert "Louis Collins" in notes and "nilearn 0.14.1" in notes


def test_demo_runs_offline_and_writes_its_outputs(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MEDNEXTV2_DATA=str(tmp_path / "no-shared-data-here"))
    env["PYTHONPATH"] = str(Path(mednextv2.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "mednextv2", "demo", "-o", str(out), "--minutes", str(DEMO_MINUTES),
                           "--device", "cpu", "--progress", "none"], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    match = re.search(r"Dice: grey matter (\d\.\d+), white matter (\d\.\d+)", done.stdout)
    assert match, done.stdout
    grey, white = (float(v) for v in match.groups())
    assert grey >= MIN_GREY_DICE and 0.0 <= white <= 1.0, done.stdout
    assert re.search(r"time: prepare \d+ s, train \d+ s, segment \d+ s, total \d+ s", done.stdout)
    seg = out / "anterior_prediction.seg.nrrd"
    _, header = nrrd.read(str(seg))
    assert header["Segment0_Name"] == "grey matter" and header["Segment1_Name"] == "white matter"
    overlay = sitk.ReadImage(str(out / "anterior_overlay.png"))
    assert overlay.GetNumberOfComponentsPerPixel() == 3 and overlay.GetSize()[0] > 200
    reference = sitk.ReadImage(str(out / "data" / "anterior_image.nii.gz"))
    prediction = sitk.ReadImage(str(seg))
    assert prediction.GetSize()[:3] == reference.GetSize()


def _hashes(folder: Path) -> dict:
    import hashlib

    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_running_the_demo_twice_works_and_says_where(tmp_path):
    """A second demo goes to a fresh numbered folder; an interrupted one is resumed; nothing of an
    earlier demo is rewritten."""
    out, said = tmp_path / "mednextv2-demo", []
    first = demo.run_demo(out, minutes=0.1, device="cpu", progress="none", echo=said.append, threads=1)
    assert first.bundle == out / "brain-tissue-model" and first.segmentation.parent == out
    before = _hashes(out)
    said.clear()
    second = demo.run_demo(out, minutes=0.1, device="cpu", progress="none", echo=said.append, threads=1)
    numbered = tmp_path / "mednextv2-demo-2"
    assert second.bundle == numbered / "brain-tissue-model" and second.segmentation.is_file()
    assert any(f"this demo writes to {numbered}" in line for line in said), said
    assert _hashes(out) == before  # the first demo's split, model and results are untouched
    # An interrupted demo (a checkpoint, no model yet) is resumed in its own folder, split kept.
    import shutil

    shutil.rmtree(numbered / "brain-tissue-model")
    split = _hashes(numbered / "data")
    said.clear()
    third = demo.run_demo(out, minutes=0.1, device="cpu", progress="none", echo=said.append, threads=1)
    assert third.bundle == numbered / "brain-tissue-model" and (third.bundle / "model.json").is_file()
    assert any(f"resuming the interrupted demo in {numbered}" in line for line in said), said
    assert _hashes(numbered / "data") == split
