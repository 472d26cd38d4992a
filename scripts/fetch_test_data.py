#!/usr/bin/env python3
"""Rebuild the real test data folder (../shared/data in this workplace) from public PyPI packages.

    python scripts/fetch_test_data.py --out DIR

- ct-lung, mr-brain-lesion, mr-breast: files of the `data/` folder of the pyradiomics 3.0.1
  source distribution (BSD-3-Clause), unchanged.
- mr-brain-tissue: the ICBM 2009a symmetric T1 template from the nilearn 0.14.1 wheel, unchanged,
  and a 3-class label map derived from its grey/white-matter probability maps (0..255):
  foreground where max(GM, WM) > 127, labelled 1 (grey) or 2 (white) by the larger one.

Each archive is checked against the SHA-256 that PyPI's index publishes before anything is
extracted. Then point the tests at the folder with MEDNEXTV2_DATA=DIR.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tarfile
import zipfile
from pathlib import Path

import requests

INDEX = "https://pypi.org/simple/{name}/"
PYRADIOMICS = ("pyradiomics", "pyradiomics-3.0.1.tar.gz")
NILEARN = ("nilearn", "nilearn-0.14.1-py3-none-any.whl")
PYRADIOMICS_FILES = {
    "ct-lung": ["lung1_image.nrrd", "lung1_label.nrrd", "lung2_image.nrrd", "lung2_label.nrrd"],
    "mr-brain-lesion": ["brain1_image.nrrd", "brain1_label.nrrd"],
    "mr-breast": ["breast1_image.nrrd", "breast1_label.nrrd"],
}
ICBM = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def fetch(name: str, filename: str) -> bytes:
    listing = requests.get(INDEX.format(name=name), headers={"Accept": "application/vnd.pypi.simple.v1+json"}, timeout=60)
    listing.raise_for_status()
    entry = next((f for f in listing.json()["files"] if f["filename"] == filename), None)
    if entry is None:
        sys.exit(f"{filename} is not on the package index any more")
    print(f"downloading {filename} ...", flush=True)
    response = requests.get(entry["url"], timeout=(30, 300))
    response.raise_for_status()
    if hashlib.sha256(response.content).hexdigest() != entry["hashes"]["sha256"]:
        sys.exit(f"{filename}: SHA-256 does not match the index; refusing to use it")
    return response.content


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)
    print(f"  {path}")


def pyradiomics_cases(out: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(fetch(*PYRADIOMICS)), mode="r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if "/data/" in m.name and m.isfile()}
        for folder, names in PYRADIOMICS_FILES.items():
            for name in names:
                write(out / folder / name, tar.extractfile(members[name]).read())


def icbm_tissue(out: Path) -> None:
    import numpy as np
    import SimpleITK as sitk

    with zipfile.ZipFile(io.BytesIO(fetch(*NILEARN))) as wheel:
        def member(kind: str) -> bytes:
            return wheel.read(f"nilearn/datasets/data/{ICBM.format(kind)}")

        target = out / "mr-brain-tissue"
        write(target / "icbm152_2009a_t1.nii.gz", member("t1"))
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
    path = target / "icbm152_2009a_tissue.nii.gz"
    sitk.WriteImage(image, str(path.with_name(".tissue.nii.gz")), True)
    path.with_name(".tissue.nii.gz").replace(path)
    print(f"  {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to (re)build, e.g. ../shared/data")
    args = parser.parse_args()
    pyradiomics_cases(args.out)
    icbm_tissue(args.out)
    print(f"done; run the tests with MEDNEXTV2_DATA={args.out}")


if __name__ == "__main__":
    main()
