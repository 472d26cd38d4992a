"""BundleSpec: every producer's bundle survives build -> save -> load unchanged; the new fields;
one validator whose jsonschema and fallback engines say the same; strict numbers; shareable
provenance."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_import_nnunet import CASE, dataset_json, write_results

from mednextv2.bundle import (Bundle, BundleSpec, Channel, InferenceDefaults, Label, NetworkSpec, Normalization,
                              PreprocessingPlan, Provenance, ResampleOrder, Resampling, load_bundle)
from mednextv2.bundle_spec import REDACTED, strip_absolute_paths
from mednextv2.errors import InputError
from mednextv2.network import MedNeXt, MedNeXtConfig
from mednextv2.schema import MODEL_ID_PATTERN, load_schema, schema_errors
from mednextv2.store.importer import convert_nnunet
from mednextv2.train.output import bundle_id, bundle_spec, write_bundle
from mednextv2.train.planning import LabelSpec, TrainingPlan, plan_from_base
from MedNeXtV2SegmentLib.tinybundle import tiny_bundle
from segment_fixtures import bundle_spec as fixture_spec
from segment_fixtures import threshold_bundle, tiny_config

NNUNET_RESAMPLING = Resampling(ResampleOrder(3, 0, None), ResampleOrder(1, 0, None))


def _round_trip(bundle: Bundle, tmp_path, name: str = "b") -> Bundle:
    loaded = load_bundle(bundle.save(tmp_path / name))
    assert loaded.spec == bundle.spec
    assert BundleSpec.from_json(json.loads((tmp_path / name / "model.json").read_text())) == bundle.spec
    return loaded


def _plan(**changes) -> TrainingPlan:
    cfg = tiny_config().replace(n_classes=3, deep_supervision=True)
    values = dict(network=cfg.to_dict(), target_spacing=(2.0, 1.5, 1.5), patch_size=(16, 32, 32), batch_size=2,
                  crop_to_nonzero=True, normalization=({"scheme": "ct", "clip": [-100.0, 300.0], "mean": 50.0, "std": 80.0},),
                  channels=({"name": "CT", "modality": "CT"},),
                  labels=(LabelSpec(3, "liver", (10, 20, 30)), LabelSpec(7, "tumor", (200, 0, 0), {"category": ["a", "b", "c"],
                                                                                            "type": ["d", "e", "f"]})),
                  mirror_axes=(1, 2))
    values.update(changes)
    return TrainingPlan(**values)


# ---------------------------------------------------------------- producers
def test_importer_bundle_round_trips(tmp_path, fixtures_dir):
    weights = load_file(str(fixtures_dir / f"{CASE}.weights.safetensors"))
    dataset = dict(dataset_json(), description="Liver CT from /home/jane/Smith_J/raw")
    bundle = convert_nnunet(write_results(tmp_path, {0: weights, 1: weights}, dataset=dataset), "liver")
    assert bundle.spec.description.startswith(f"Liver CT from {REDACTED} Imported from nnU-Net v2 results")
    loaded = _round_trip(bundle, tmp_path)
    assert loaded.spec.network.grn_norm == "mean" and loaded.spec.provenance.imported_from["folds"] == ["fold_0", "fold_1"]
    assert loaded.preprocessing.resampling == NNUNET_RESAMPLING  # the plan's: cubic data, linear probabilities


def test_trained_bundle_round_trips_and_names_no_path(tmp_path):
    plan = _plan()
    state = MedNeXt(plan.config).state_dict()
    training = {"dataset": "Task01_Liver", "dataset_sha256": "0" * 64, "n_train_cases": 4}
    path = write_bundle(tmp_path / "Liver Model", plan, state, {"dice": {"liver": 0.9}}, training)
    loaded = load_bundle(path)
    assert loaded.spec == Bundle.create(bundle_spec(path, plan, {"dice": {"liver": 0.9}}, training), [state]).spec
    assert loaded.id == "liver-model"  # the one id rule: lower case
    assert [(lab.value, lab.name) for lab in loaded.labels] == [(1, "liver"), (2, "tumor")]
    assert loaded.preprocessing == plan.preprocessing_plan() and loaded.inference.mirror_axes == (1, 2)
    assert loaded.spec.preprocessing.resampling is None  # our own bundles: linear, field omitted
    assert "resampling" not in json.loads((path / "model.json").read_text())["preprocessing"]


def test_plan_from_base_keeps_resampling_and_round_trips(tmp_path):
    base = Bundle.create(threshold_bundle().spec.replace(
        preprocessing=PreprocessingPlan((2.0, 1.5, 1.5), (Normalization("zscore"),), resampling=NNUNET_RESAMPLING)),
        [threshold_bundle().load_state_dicts()[0]])
    plan = plan_from_base(base.spec, {1: "structure1", 2: "new"}, 1)
    assert plan.preprocessing_plan().resampling == NNUNET_RESAMPLING
    state = MedNeXt(plan.config).state_dict()
    path = write_bundle(tmp_path / "tuned", plan, state, {}, {"dataset": "d", "n_train_cases": 1})
    assert load_bundle(path).spec.preprocessing.resampling == NNUNET_RESAMPLING
    _round_trip(Bundle.create(bundle_spec(path, plan, {}, {"dataset": "d", "n_train_cases": 1}), [state]), tmp_path)


def test_slicer_tiny_bundle_round_trips(tmp_path):
    loaded = _round_trip(tiny_bundle("tiny"), tmp_path)
    assert loaded.labels[1].terminology["type"] == ["SCT", "85756007", "Tissue"]


def test_every_optional_field_round_trips_through_folder_and_zip(tmp_path):
    spec = BundleSpec(
        id="all-fields", title="All", description="d", license="CC-BY-4.0",
        network=NetworkSpec.from_config(tiny_config()),
        labels=(Label(1, "structure1", (1, 2, 3)),), channels=(Channel("T1", "MR"),),
        preprocessing=PreprocessingPlan(None, (Normalization("none"),), True, "as-is", NNUNET_RESAMPLING),
        inference=InferenceDefaults((16, 32, 48), 0.25, (), (4.0, 3.0, 3.0), "nnunet"),
        provenance=Provenance("base", "data", {"dice": {"a": 0.5}}, "2026-01-01", {"epochs": 2}, {"folds": [0]},
                              {"custom": [1, 2]}))
    bundle = Bundle.create(spec, [threshold_bundle().load_state_dicts()[0]])
    for name in ("folder", "b.zip"):
        assert load_bundle(bundle.save(tmp_path / name)).spec == bundle.spec


# ---------------------------------------------------------------- new fields
def test_grn_norm_defaults_to_mean_and_sum_is_stored(tmp_path):
    path = threshold_bundle().save(tmp_path / "m")
    doc = json.loads((path / "model.json").read_text())
    assert doc["network"]["grn_norm"] == "mean"
    del doc["network"]["grn_norm"]  # a bundle written before the field existed
    (path / "model.json").write_text(json.dumps(doc))
    old = load_bundle(path)
    assert old.network.grn_norm == "mean" and len(old.build_models()) == 1
    doc["network"]["grn_norm"] = "sum"
    assert BundleSpec.from_json(doc).network.grn_norm == "sum"
    doc["network"]["grn_norm"] = "max"
    with pytest.raises(InputError, match=r"network.grn_norm: must be one of \['mean', 'sum'\]"):
        BundleSpec.from_json(doc)


def test_importance_map_is_ours_unless_recorded_and_validated(tmp_path):
    path = threshold_bundle().save(tmp_path / "m")
    doc = json.loads((path / "model.json").read_text())
    assert "importance_map" not in doc["inference"]  # our own bundles: unchanged files, our map
    assert load_bundle(path).inference.importance_map == "mednextv2"
    doc["inference"]["importance_map"] = "nnunet"
    assert BundleSpec.from_json(doc).inference.importance_map == "nnunet"
    doc["inference"]["importance_map"] = "flat"
    with pytest.raises(InputError, match=r"inference.importance_map: must be one of \['mednextv2', 'nnunet'\]"):
        BundleSpec.from_json(doc)


def test_fold_mirror_axes_round_trip_and_are_validated(tmp_path):
    one = threshold_bundle().load_state_dicts()[0]
    spec = threshold_bundle().spec
    spec = spec.replace(weights=(), inference=InferenceDefaults(spec.inference.patch_size, mirror_axes=(0, 1, 2),
                                                                fold_mirror_axes=((0, 2), (1,))))
    loaded = _round_trip(Bundle.create(spec, [one, one]), tmp_path)
    assert loaded.inference.fold_mirror_axes == ((0, 2), (1,))
    assert loaded.inference.mirror_axes_per_fold(2) == ((0, 2), (1,))
    # fine-tuning augments on the axes every fold mirrors
    assert plan_from_base(loaded.spec, {1: "structure1"}, 1).mirror_axes == ()
    doc = json.loads((tmp_path / "b" / "model.json").read_text())
    assert doc["inference"]["fold_mirror_axes"] == [[0, 2], [1]]
    assert "fold_mirror_axes" not in threshold_bundle().spec.to_json()["inference"]  # our own bundles omit it
    assert threshold_bundle().inference.mirror_axes_per_fold(2) == ((0, 1, 2),) * 2
    for change, message in (({"fold_mirror_axes": [[0, 2]]}, r"one axes list per weights file \(2\), got 1"),
                            ({"fold_mirror_axes": [[0, 0], [1]]}, r"fold_mirror_axes\[0\]: axes must not repeat"),
                            ({"fold_mirror_axes": [[0, 3], [1]]}, r"fold_mirror_axes\[0\]\[1\]: must be one of"),
                            ({"mirror_axes": [0, 2]}, r"mirror_axes: must be the union of fold_mirror_axes \[0, 1, 2\]")):
        with pytest.raises(InputError, match=message):
            BundleSpec.from_json(dict(doc, inference=dict(doc["inference"], **change)))


def test_resampling_is_validated():
    doc = fixture_spec(tiny_config())
    doc["preprocessing"]["resampling"] = NNUNET_RESAMPLING.to_json()
    doc["weights"] = ["w.safetensors"]
    assert BundleSpec.from_json(doc).preprocessing.resampling == NNUNET_RESAMPLING
    doc["preprocessing"]["resampling"]["data"]["order"] = 7
    with pytest.raises(InputError, match=r"resampling.data.order: must be <= 5"):
        BundleSpec.from_json(doc)
    del doc["preprocessing"]["resampling"]["probabilities"]
    with pytest.raises(InputError, match="resampling.probabilities: required field is missing"):
        BundleSpec.from_json(doc)


# ---------------------------------------------------------------- one validator
def _broken_documents():
    good = dict(fixture_spec(tiny_config()), weights=["w.safetensors"])
    mutations = [
        lambda d: d.update(format_version=2), lambda d: d.update(labels=[]), lambda d: d.pop("network"),
        lambda d: d["inference"].update(step=1.5), lambda d: d["inference"].update(patch_size=[16.0, 32, 32.5]),
        lambda d: d["network"].update(n_classes=True), lambda d: d["network"].update(unknown=1),
        lambda d: d["preprocessing"].update(normalization=[{"scheme": "minmax"}]),
        lambda d: d["labels"][0].update(terminology={"category": ["SCT", "1"]}),
        lambda d: d["labels"][0].update(color=[256, -1, "x", 0]), lambda d: d.update(id="Upper"),
        lambda d: d.update(id="evil\n"), lambda d: d.update(title=""), lambda d: d["channels"].append({"name": "x"}),
        lambda d: d["preprocessing"].update(target_spacing=[0, 1]), lambda d: d.update(weights=["a/b.pt"]),
        lambda d: d["inference"].update(fold_mirror_axes=[[0, 5, 1, 2]]),
        lambda d: d["preprocessing"].update(normalization=[{"scheme": "volume_znorm", "upper_quantile": 1.5,
                                                            "rescale": [0, 1, 2]}]),
        lambda d: d["preprocessing"].update(orientation="RAI", axis_order="yxz"),
    ]
    for mutate in mutations:
        doc = copy.deepcopy(good)
        mutate(doc)
        yield doc


def test_jsonschema_and_fallback_report_the_same_problems():
    schema = load_schema("model.schema.json")
    for doc in _broken_documents():
        theirs = schema_errors(doc, schema, engine="jsonschema")
        assert theirs, doc
        assert schema_errors(doc, schema, engine="fallback") == theirs
    good = dict(fixture_spec(tiny_config()), weights=["w.safetensors"])
    assert schema_errors(good, schema, engine="fallback") == schema_errors(good, schema, engine="jsonschema") == []


def test_one_id_rule_everywhere():
    assert load_schema("model.schema.json")["properties"]["id"]["pattern"] == MODEL_ID_PATTERN
    assert load_schema("catalog.schema.json")["$defs"]["entry"]["properties"]["id"]["pattern"] == MODEL_ID_PATTERN
    doc = dict(fixture_spec(tiny_config()), weights=["w.safetensors"])
    for bad in ("evil\n", "Upper", "a" * 65, "con", "end."):
        with pytest.raises(InputError, match="id"):
            BundleSpec.from_json(dict(doc, id=bad))
    assert bundle_id(Path("/x/My Model.zip")) == "my-model" and bundle_id(Path("CON")) == "trained-model"


# ---------------------------------------------------------------- shareable
def test_strip_absolute_paths_keeps_names_and_urls():
    spec = threshold_bundle().spec.replace(
        description="Trained on /home/jane/patients/Smith_J/data with C:\\Users\\jane\\x; see https://example.org/a/b, 0.5/0.8",
        provenance=Provenance(training_data="/srv/x", training={"dataset": "/data/Task01", "n": 3, "list": ["/a/b", "ok"]}))
    clean = strip_absolute_paths(spec)
    assert clean.description == (f"Trained on {REDACTED} with {REDACTED}; see https://example.org/a/b, 0.5/0.8")
    assert clean.provenance.training_data == REDACTED
    assert clean.provenance.training == {"dataset": REDACTED, "n": 3, "list": [REDACTED, "ok"]}
    assert "jane" not in json.dumps(clean.to_json())


def test_ras_orientation_and_volume_znorm_round_trip_and_are_validated(tmp_path):
    """AMAES-based models: RAS arrays in (x, y, z) order, Yucca's volume z-norm rescaled to [0, 1]."""
    norm = Normalization("volume_znorm", upper_quantile=0.99, rescale=(0.0, 1.0))
    spec = fixture_spec(tiny_config())
    spec = BundleSpec.from_json(dict(spec, weights=["w.safetensors"])).replace(
        weights=(), preprocessing=PreprocessingPlan((1.0, 1.0, 1.0), (norm,), True, "RAS",
                                                    Resampling(ResampleOrder(3, 0, False), ResampleOrder(1, 0, False))))
    bundle = Bundle.create(spec, [threshold_bundle().load_state_dicts()[0]])
    for name in ("folder", "b.zip"):
        assert load_bundle(bundle.save(tmp_path / name)).spec == bundle.spec
    doc = json.loads((tmp_path / "folder" / "model.json").read_text())
    pre = doc["preprocessing"]
    assert pre["orientation"] == "RAS" and pre["axis_order"] == "xyz"
    assert pre["normalization"] == [{"scheme": "volume_znorm", "upper_quantile": 0.99, "rescale": [0.0, 1.0]}]
    for mutate, message in (
            (lambda p: p.update(axis_order="zyx"), "orientation 'RAS' gives the array axes in 'xyz' order"),
            (lambda p: p.update(orientation="RAI"), r"orientation: must be one of \['LPS', 'RAS', 'as-is'\]"),
            (lambda p: p["normalization"][0].update(rescale=[1.0, 0.0]), r"rescale: low must be below high"),
            (lambda p: p["normalization"][0].update(upper_quantile=1.5), r"upper_quantile: must be <= 1"),
            (lambda p: p["normalization"][0].update(scheme="zscore"),
             "rescale, upper_quantile only apply to scheme 'volume_znorm'")):
        broken = copy.deepcopy(doc)
        mutate(broken["preprocessing"])
        with pytest.raises(InputError, match=message):
            BundleSpec.from_json(broken)
    lps = copy.deepcopy(doc)
    lps["preprocessing"].update(orientation="LPS", axis_order="xyz")
    with pytest.raises(InputError, match="orientation 'LPS' gives the array axes in 'zyx' order"):
        BundleSpec.from_json(lps)
