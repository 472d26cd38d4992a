"""MedNeXtV2Train: pairing scene nodes into cases, per-case checks, the label table."""
from __future__ import annotations


import pytest


from MedNeXtV2TrainLib.case_checks import ERROR, WARNING, CaseFacts, Geometry, check_cases, has_errors  # noqa: E402
from MedNeXtV2TrainLib.label_table import (BASE, IGNORE, NEW, BaseLabel, LabelChoice, dataset_labels,  # noqa: E402
                                           default_choices, union_of_segments, value_by_segment)
from MedNeXtV2TrainLib.pairing import CaseRow, NodeRecord, case_stem, pair_cases, row_for_case  # noqa: E402
from mednextv2.train.options import MIN_CASES_TO_HOLD_OUT  # noqa: E402


def test_case_stem_drops_role_words():
    assert case_stem("CT-chest 3 segmentation") == "ct chest 3"
    assert case_stem("case_7_label") == "case 7"
    assert case_stem("Segmentation") == "segmentation"  # nothing but a role word: keep it


def test_pairing_prefers_reference_then_study_then_name():
    volumes = [NodeRecord("v1", "CT 1", "s1"), NodeRecord("v2", "CT 2", "s1"), NodeRecord("v3", "Liver MR", "s2"),
               NodeRecord("v4", "patient9", None), NodeRecord("v5", "orphan", None)]
    segs = [
        NodeRecord("g1", "Segmentation", "s1", reference_volume_id="v2"),  # reference wins over names
        NodeRecord("g2", "CT 1 seg", "s1"),                                # same study + name
        NodeRecord("g3", "tumour", "s2"),                                  # only pair in study s2
        NodeRecord("g4", "patient9_label", None),                          # name only
        NodeRecord("g5", "nothing like it", None),
    ]
    result = pair_cases(volumes, segs)
    got = {(p.volume_id, p.segmentation_id) for p in result.pairs}
    assert got == {("v2", "g1"), ("v1", "g2"), ("v3", "g3"), ("v4", "g4")}
    assert result.unpaired_volumes == ("v5",)
    assert result.unpaired_segmentations == ("g5",)
    reasons = {p.segmentation_id: p.reason for p in result.pairs}
    assert reasons["g1"] == "segmented on this volume" and reasons["g4"] == "matching name"


def test_pairing_uses_each_volume_once_and_refuses_ambiguous_names():
    volumes = [NodeRecord("v1", "case1", None), NodeRecord("v2", "case1", None)]
    segs = [NodeRecord("g1", "case1 label", None)]
    result = pair_cases(volumes, segs)
    assert result.pairs == ()  # two volumes with the same name: the user must choose
    volumes = [NodeRecord("v1", "a", None)]
    segs = [NodeRecord("g1", "x", None, "v1"), NodeRecord("g2", "y", None, "v1")]
    result = pair_cases(volumes, segs)
    assert [p.segmentation_id for p in result.pairs] == ["g1"] and result.unpaired_segmentations == ("g2",)


GRID = Geometry((64, 64, 20), (0.8, 0.8, 3.0), (-25.0, -25.0, 10.0))


def test_case_checks_report_every_problem_by_case():
    facts = [
        CaseFacts("ok", GRID, {"liver": 100, "tumor": 5}),
        CaseFacts("empty", GRID, {"liver": 0, "tumor": 0}),
        CaseFacts("no segments", GRID, {}),
        CaseFacts("partial", GRID, {"liver": 50, "tumor": 0}),
        CaseFacts("missing", GRID, {"liver": 80}),
        CaseFacts("moved", GRID, {"liver": 80, "tumor": 3},
                  segmentation_geometry=Geometry((64, 64, 20), (0.8, 0.8, 3.0), (-20.0, -25.0, 10.0))),
        CaseFacts("rotated", GRID, {"liver": 80, "tumor": 3},
                  segmentation_geometry=Geometry((64, 64, 20), (0.8, 0.8, 3.0), (-25.0, -25.0, 10.0),
                                                 (0, 1, 0, 1, 0, 0, 0, 0, 1))),
        CaseFacts("same grid", GRID, {"liver": 80, "tumor": 3}, segmentation_geometry=GRID),
        # saved cropped to its segments, as .seg.nrrd files are: same voxels, other extent
        CaseFacts("cropped", GRID, {"liver": 80, "tumor": 3},
                  segmentation_geometry=Geometry((20, 30, 5), (0.8, 0.8, 3.0), (-25.0 + 4 * 0.8, -25.0 + 10 * 0.8, 10.0 + 3 * 3.0))),
        CaseFacts("half voxel", GRID, {"liver": 80, "tumor": 3},
                  segmentation_geometry=Geometry((64, 64, 20), (0.8, 0.8, 3.0), (-24.6, -25.0, 10.0))),
    ]
    problems = check_cases(facts, ["liver", "tumor"])
    by_case = {}
    for p in problems:
        by_case.setdefault(p.case, []).append(p)
    assert "ok" not in by_case and "same grid" not in by_case and "cropped" not in by_case
    assert "origin" in by_case["half voxel"][0].message, "half a voxel off means resampling: warn"
    assert [p.severity for p in by_case["empty"]] == [ERROR] and "empty" in by_case["empty"][0].message
    assert by_case["no segments"][0].severity == ERROR
    assert by_case["partial"][0].severity == WARNING and "tumor" in by_case["partial"][0].message
    assert by_case["missing"][0].severity == WARNING and "no segment named tumor" in by_case["missing"][0].message
    assert "origin" in by_case["moved"][0].message
    assert "orientation" in by_case["rotated"][0].message
    assert has_errors(problems)
    assert not has_errors(check_cases([facts[0], facts[7]], ["liver", "tumor"]))


def test_case_checks_follow_the_engine_one_case_is_enough():
    # The engine trains on every case below MIN_CASES_TO_HOLD_OUT (train/run.split_cases): the
    # wizard must not refuse what the engine does, only say what a second case would add.
    problems = check_cases([CaseFacts("a", GRID, {"x": 1})], ["x"])
    assert not has_errors(problems)
    assert [(p.case, p.severity) for p in problems] == [("dataset", WARNING)]
    assert "no held-out Dice" in problems[0].message and "second case adds variety" in problems[0].message
    assert f"from {MIN_CASES_TO_HOLD_OUT} cases on" in problems[0].message
    assert not any(p.case == "dataset" for p in check_cases([CaseFacts(n, GRID, {"x": 1}) for n in "ab"], ["x"]))
    problems = check_cases([], ["x"])
    assert has_errors(problems) and "at least one case" in problems[0].message
    problems = check_cases([CaseFacts("a", GRID, {"x": 1}), CaseFacts("a", GRID, {"x": 1})], ["x"])
    assert any("two cases have this name" in p.message for p in problems)


def test_row_for_an_improve_case_reuses_the_volume_row_and_leaves_its_twins_out():
    rows = [CaseRow("v1", "s2"), CaseRow("v1", "s1", used=False), CaseRow("v2", "s1"), CaseRow("v1", "s1")]
    assert row_for_case(rows, "v1", "s1") == (1, [0, 3])  # the exact pair, even unticked; other v1 rows out
    assert row_for_case(rows, "v2", "s9") == (2, [])      # the volume's row takes the new segmentation
    assert row_for_case(rows, "v3", "s1") == (None, [])   # a new row
    assert row_for_case([], "v1", "s1") == (None, [])


BASE_LABELS = [BaseLabel(1, "liver", (221, 130, 101)), BaseLabel(2, "spleen", (157, 108, 162)), BaseLabel(3, "left kidney")]


def test_union_keeps_first_color_and_counts_cases():
    union = union_of_segments([[("Liver", (1, 2, 3)), ("tumor", (9, 9, 9))], [("Liver", (7, 7, 7)), ("Left_Kidney", (5, 5, 5))]])
    assert [(s.name, s.color, s.case_count) for s in union] == [
        ("Liver", (1, 2, 3), 2), ("tumor", (9, 9, 9), 1), ("Left_Kidney", (5, 5, 5), 1)]


def test_default_mapping_matches_names_and_values_are_consistent():
    union = union_of_segments([[("tumor", (9, 9, 9)), ("Liver", (1, 2, 3)), ("Left_Kidney", (5, 5, 5))]])
    choices = default_choices(union, BASE_LABELS)
    assert choices == [LabelChoice("tumor", NEW, "tumor"), LabelChoice("Liver", BASE, "liver"),
                       LabelChoice("Left_Kidney", BASE, "left kidney")]
    labels = dataset_labels(union, choices, BASE_LABELS)
    # base labels first in the base model's order, then new ones; names are the base model's
    assert [(l.value, l.name, l.from_base) for l in labels] == [(1, "liver", True), (2, "left kidney", True), (3, "tumor", False)]
    assert labels[0].color == (221, 130, 101) and labels[2].color == (9, 9, 9)
    assert value_by_segment(labels) == {"Liver": 1, "Left_Kidney": 2, "tumor": 3}


def test_edited_mapping_merges_renames_and_ignores():
    union = union_of_segments([[("lesion A", (1, 1, 1)), ("lesion B", (2, 2, 2)), ("vessel", (3, 3, 3)), ("Liver", (4, 4, 4))]])
    choices = [LabelChoice("lesion A", NEW, "lesion"), LabelChoice("lesion B", NEW, "lesion"),
               LabelChoice("vessel", IGNORE), LabelChoice("Liver", NEW, "liver parenchyma")]
    labels = dataset_labels(union, choices, [])
    assert [(l.value, l.name, l.segments) for l in labels] == [
        (1, "lesion", ("lesion A", "lesion B")), (2, "liver parenchyma", ("Liver",))]
    assert "vessel" not in value_by_segment(labels)


@pytest.mark.parametrize("choices, words", [
    ([LabelChoice("tumor", BASE, "pancreas")], "does not have"),
    ([LabelChoice("tumor", NEW, "Liver")], "name of a base-model label"),
    ([LabelChoice("tumor", NEW, "  ")], "other than background"),
    ([LabelChoice("ghost", NEW, "ghost")], "in no case"),
    ([LabelChoice("tumor", IGNORE)], "keep at least one label"),
])
def test_bad_mappings_are_named(choices, words):
    union = union_of_segments([[("tumor", (9, 9, 9))]])
    with pytest.raises(ValueError, match=words):
        dataset_labels(union, choices, BASE_LABELS)


def test_scene_changes_merge_into_the_case_table():
    """Module entry and scene import merge new pairs into the table: the user's manual rows and
    unticked cases stay."""
    from MedNeXtV2TrainLib.pairing import CasePair, CaseRow, merge_pairs

    rows = [CaseRow("v1", "g1", used=False),       # unticked by the user
            CaseRow("v2", "g9"),                   # paired by hand, differently from the automatic pairing
            CaseRow(None, None),                   # a manual row not filled in yet
            CaseRow("v3", "g3")]                   # its segmentation was deleted from the scene
    pairs = [CasePair("v1", "g1", "reference"), CasePair("v2", "g2", "name"), CasePair("v4", "g4", "name"),
             CasePair("v3", "g5", "study")]
    scene = {"v1", "g1", "v2", "g9", "g2", "v3", "v4", "g4", "g5"}
    stale, added = merge_pairs(rows, pairs, scene.__contains__)
    assert stale == [3]
    assert [(p.volume_id, p.segmentation_id) for p in added] == [("v4", "g4"), ("v3", "g5")]
    assert merge_pairs([], pairs, scene.__contains__) == ([], list(pairs))
