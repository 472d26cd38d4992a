"""Hostile bundles and model folders, second round: label names that would forge .seg.nrrd
header fields, zip entries that unpack to far more than they hold, `train -o` folders that are
not what they claim, and a folder swap cut short. Each is refused (exit 2) or repaired, with a
message naming the file, and no file the engine did not write is ever deleted."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from mednextv2.bundle import Label, load_bundle
from mednextv2.cli import main
from mednextv2.errors import InputError
from mednextv2.export import write_seg_nrrd
from segment_fixtures import make_image, threshold_bundle
from test_import_nnunet import home  # noqa: F401  (autouse: a fresh model cache per test)

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
