"""Label table: names, colours and Slicer terminology strings from a real bundle."""
from __future__ import annotations

import json

import pytest

from MedNeXtV2SegmentLib.labels import LabelTableError, bundle_label_table, load_bundle, selected_label_table
from MedNeXtV2SegmentLib.tinybundle import LABELS, make_tiny_bundle


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


def deserialize(entry: str) -> list:
    """The checks of vtkSlicerTerminologiesModuleLogic::DeserializeTerminologyEntry (Slicer source)."""
    parts = entry.split("~")
    assert len(parts) == 7, entry
    assert parts[1] != "^^", "an empty category is rejected by Slicer"
    for index in (1, 2):
        assert len(parts[index].split("^")) == 3
    return parts


def test_label_table_from_a_real_bundle(tiny_bundle):
    table = bundle_label_table(tiny_bundle)
    assert [(e.value, e.name, e.color) for e in table] == [(1, "lesion", (255, 0, 0)), (2, "tissue", (0, 200, 100))]
    assert table[1].color_float == pytest.approx((0.0, 200 / 255, 100 / 255))
    parts = deserialize(table[1].terminology)
    assert parts[1:3] == ["SCT^85756007^Tissue", "SCT^85756007^Tissue"]
    assert parts[0].startswith("Segmentation category and type")


def test_terminology_matches_what_the_engine_writes_into_the_seg_nrrd(tiny_bundle):
    # One serializer for the panel and the file: the strings must be identical.
    from mednextv2.inference.export import terminology_string

    for label, entry in zip(load_bundle(tiny_bundle).labels, bundle_label_table(tiny_bundle)):
        assert entry.terminology == terminology_string(label)


def test_labels_without_terminology(tmp_path, tiny_bundle):
    import shutil

    copy = tmp_path / "plain"
    shutil.copytree(tiny_bundle, copy)
    spec = json.loads((copy / "model.json").read_text(encoding="utf-8"))
    for label in spec["labels"]:
        label.pop("terminology")
    (copy / "model.json").write_text(json.dumps(spec))
    assert [e.terminology for e in bundle_label_table(copy)] == ["", ""]


def test_structures_are_chosen_by_the_engines_rule():
    """One rule for panel and engine: names are case-insensitive (the panel's copy was not)."""
    from mednextv2.bundle import Label

    labels = [Label(2, "b", (1, 2, 3)), Label(1, "a", (4, 5, 6))]
    table = selected_label_table(labels, ())
    assert [e.value for e in table] == [1, 2]
    assert [e.name for e in selected_label_table(labels, ("B", "b"))] == ["b"]
    with pytest.raises(LabelTableError, match="unknown structure.*zz.*this model has: b, a"):
        selected_label_table(labels, ("zz",))


def test_broken_bundles_are_named(tmp_path):
    with pytest.raises(LabelTableError, match="does not exist"):
        bundle_label_table(tmp_path / "missing")
    (tmp_path / "nojson").mkdir()
    with pytest.raises(LabelTableError, match="model.json"):
        bundle_label_table(tmp_path / "nojson")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.json").write_text("{")
    with pytest.raises(LabelTableError, match="not valid JSON"):
        bundle_label_table(bad)


def test_tiny_bundle_labels_are_the_documented_ones(tiny_bundle):
    spec = json.loads((tiny_bundle / "model.json").read_text(encoding="utf-8"))
    assert spec["labels"] == LABELS
