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
    done = subprocess.run([sys.executable, "-m", "mednextv2", "demo", "-o", str(out), "--minutes", "0.2",
                           "--device", "cpu", "--progress", "none"], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    match = re.search(r"Dice: grey matter (\d\.\d+), white matter (\d\.\d+)", done.stdout)
    assert match, done.stdout
    assert all(0.0 <= float(v) <= 1.0 for v in match.groups())
    assert re.search(r"time: prepare \d+ s, train \d+ s, segment \d+ s, total \d+ s", done.stdout)
    seg = out / "anterior_prediction.seg.nrrd"
    _, header = nrrd.read(str(seg))
    assert header["Segment0_Name"] == "grey matter" and header["Segment1_Name"] == "white matter"
    overlay = sitk.ReadImage(str(out / "anterior_overlay.png"))
    assert overlay.GetNumberOfComponentsPerPixel() == 3 and overlay.GetSize()[0] > 200
    reference = sitk.ReadImage(str(out / "data" / "anterior_image.nii.gz"))
    prediction = sitk.ReadImage(str(seg))
    assert prediction.GetSize()[:3] == reference.GetSize()
