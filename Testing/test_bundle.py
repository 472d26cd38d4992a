"""Model bundle: save/load round trips (folder, zip, ensembles, .pt), validation messages, safety."""
from __future__ import annotations

import json
import os
import stat
import pickle
import zipfile

import jsonschema
import pytest
import torch

from mednextv2 import load_bundle
from mednextv2.bundle import Bundle, load_schema, schema_errors, validate_model_json
from mednextv2.errors import InputError
from segment_fixtures import one_torch_thread, bundle_spec, threshold_bundle, threshold_state_dict, tiny_config


def _spec(**kw):
    return bundle_spec(tiny_config(), **kw)


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["model", "model.zip"])
def test_save_load_round_trip(tmp_path, name):
    bundle = threshold_bundle((300.0,), folds=2)
    path = bundle.save(tmp_path / name)
    loaded = load_bundle(path)
    assert loaded.spec == bundle.spec
    assert loaded.weights == ("fold_0.safetensors", "fold_1.safetensors")
    for a, b in zip(loaded.load_state_dicts(), bundle.load_state_dicts()):
        assert _same_state(a, b)
    assert loaded.labels[0].name == "structure1" and loaded.labels[0].color == (255, 0, 0)
    assert loaded.preprocessing.target_spacing == (2.0, 1.5, 1.5)
    assert loaded.inference.patch_size == (16, 32, 32)
    # a loaded bundle saves again (copying its weight files) and stays identical
    again = load_bundle(loaded.save(tmp_path / ("copy.zip" if name.endswith(".zip") else "copy")))
    assert _same_state(again.load_state_dicts()[1], bundle.load_state_dicts()[1])


def test_zip_with_top_folder_and_save_over_existing(tmp_path):
    bundle = threshold_bundle()
    folder = bundle.save(tmp_path / "lung")
    with zipfile.ZipFile(tmp_path / "lung.zip", "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"lung/{f.name}")
    assert load_bundle(tmp_path / "lung.zip").id == "known-threshold"
    # saving over an existing bundle folder replaces it completely and leaves no temporaries
    (folder / "stale.txt").write_text("x")
    bundle.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "weights.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lung", "lung.zip"]
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~mask  # not mkdtemp's private 0700


def test_build_models_is_the_network_with_the_weights():
    bundle = threshold_bundle((300.0,), folds=2)
    models = bundle.build_models("cpu")
    assert len(models) == 2 and not models[0].training and not models[0].deep_supervision
    x = torch.linspace(-1.0, 5.0, 16 * 16 * 32).reshape(1, 1, 16, 16, 32)
    with torch.no_grad():
        logits = models[0](x)
    assert torch.equal(logits.argmax(1), (x[:, 0] > 3.0).long())


def test_deep_supervision_heads_in_weights_are_accepted(tmp_path):
    from mednextv2.network import MedNeXt
    cfg = tiny_config()
    model = MedNeXt(cfg.replace(deep_supervision=True))
    bundle = Bundle.create(bundle_spec(cfg), [model.state_dict()])
    assert any(k.startswith("out_1.") for k in bundle.load_state_dicts()[0])
    assert not load_bundle(bundle.save(tmp_path / "ds")).build_models()[0].deep_supervision


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pt_weights_load_with_weights_only_and_pickles_are_refused(tmp_path):
    cfg = tiny_config()
    spec = dict(_spec(), weights=["fold0.pt"])
    path = Bundle.create(spec, [threshold_state_dict(cfg, [3.0])]).save(tmp_path / "pt")
    assert len(load_bundle(path).build_models()) == 1

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (path / "fold0.pt").write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(InputError, match="weights_only"):
        load_bundle(path).load_state_dicts()


def test_missing_weights_named(tmp_path):
    path = threshold_bundle().save(tmp_path / "m")
    (path / "weights.safetensors").unlink()
    with pytest.raises(InputError, match="weights.safetensors.*missing"):
        load_bundle(path)


def test_corrupt_safetensors_and_wrong_shapes(tmp_path):
    path = threshold_bundle().save(tmp_path / "m")
    (path / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a valid safetensors"):
        load_bundle(path).load_state_dicts()
    spec = json.loads((path / "model.json").read_text(encoding="utf-8"))
    other = Bundle.create(dict(spec, network=dict(spec["network"], n_channels=4)),
                          [threshold_state_dict(tiny_config(), [1.0])])
    with pytest.raises(InputError, match="does not fit the network config"):
        load_bundle(other.save(tmp_path / "wrong")).build_models()


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.pop("labels"), "labels: required field is missing"),
    (lambda s: s["labels"][0].update(color=[255, 0]), r"labels\[0\].color: needs at least 3"),
    (lambda s: s["labels"][0].update(value=5), "labels: values must be 1..1"),
    (lambda s: s["channels"][0].update(modality="PET"), r"channels\[0\].modality: must be one of"),
    (lambda s: s["preprocessing"].update(target_spacing=[1.0, 0.0, 1.0]), r"target_spacing\[1\]: must be > 0"),
    (lambda s: s["inference"].update(patch_size=[24, 32, 32]), "divisible by 16"),
    (lambda s: s["network"].update(n_classes="2"), "network.n_classes: expected integer"),
    (lambda s: s.update(weights=["../evil.safetensors"]), r"weights\[0\]"),
    (lambda s: s.update(colour=1), "colour: unknown field"),
    (lambda s: s["preprocessing"]["normalization"][0].pop("mean"), "scheme 'ct' needs clip, mean and std"),
])
def test_validation_names_field_and_file(tmp_path, mutate, message):
    path = threshold_bundle().save(tmp_path / "m")
    spec = json.loads((path / "model.json").read_text(encoding="utf-8"))
    mutate(spec)
    (path / "model.json").write_text(json.dumps(spec))
    with pytest.raises(InputError, match=message) as err:
        load_bundle(path)
    assert str(path / "model.json") in str(err.value)


def test_not_json_not_zip_not_bundle(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(InputError, match="no model.json"):
        load_bundle(tmp_path / "a")
    (tmp_path / "a" / "model.json").write_text("{nope")
    with pytest.raises(InputError, match="not valid JSON"):
        load_bundle(tmp_path / "a")
    (tmp_path / "b.zip").write_bytes(b"PK not really")
    with pytest.raises(InputError, match="not a valid zip"):
        load_bundle(tmp_path / "b.zip")
    with pytest.raises(InputError, match="does not exist"):
        load_bundle(tmp_path / "missing")


def test_shipped_schema_is_valid_and_agrees_with_jsonschema():
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    good = dict(_spec(), weights=["weights.safetensors"])
    jsonschema.validate(good, schema)
    assert schema_errors(good, schema) == []
    bad_cases = [dict(good, format_version=2), dict(good, labels=[]),
                 dict(good, inference=dict(good["inference"], step=1.5)),
                 dict(good, preprocessing=dict(good["preprocessing"], normalization=[{"scheme": "minmax"}])),
                 dict(good, labels=[dict(good["labels"][0], terminology={"category": ["SCT", "1"]})])]
    for bad in bad_cases:
        ours = schema_errors(bad, schema)
        theirs = list(jsonschema.Draft202012Validator(schema).iter_errors(bad))
        assert bool(ours) == bool(theirs) == True, (bad, ours)  # noqa: E712


def test_create_checks_weight_count():
    with pytest.raises(InputError, match="2 state dict"):
        Bundle.create(dict(_spec(), weights=["a.safetensors"]), [{}, {}])
    with pytest.raises(InputError, match="new bundle"):
        validate_model_json(dict(_spec(), id=""), "new bundle")
