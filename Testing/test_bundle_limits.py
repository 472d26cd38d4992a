"""Hostile model files that could give tracebacks: JSON nested hundreds of levels deep, a zip
holding both `x` and `x/y`, huge (sparse) weights files, networks too large to build. Each is a
clear refusal with its exit code, before anything large is read or allocated."""
from __future__ import annotations

import json
import zipfile

import pytest

from mednextv2.bundle import load_bundle
from mednextv2.cli import main
from mednextv2.errors import InputError
from segment_fixtures import threshold_bundle

DEEP = 700


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_deeply_nested_model_json_is_refused(tmp_path, data_dir, capsys):
    bundle = threshold_bundle().save(tmp_path / "model")
    spec = json.loads((bundle / "model.json").read_text(encoding="utf-8"))
    text = json.dumps(spec)[:-1] + ', "extra": ' + _nested(DEEP) + "}"
    (bundle / "model.json").write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match="model.json: not valid JSON \\(nested deeper than 64 levels\\)"):
        load_bundle(bundle)
    scan = data_dir / "mr-breast" / "breast1_image.nrrd"
    rc = main(["segment", str(scan), "-m", str(bundle), "-o", str(tmp_path / "out.nrrd"), "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and "nested deeper than 64 levels" in err and "Traceback" not in err, err


def test_deeply_nested_catalog_does_not_crash_models_list(tmp_path, home, monkeypatch, capsys):
    catalog = tmp_path / "catalog.json"
    catalog.write_text('{"format_version": 1, "models": ' + _nested(DEEP) + "}", encoding="utf-8")
    monkeypatch.setenv("MEDNEXTV2_CATALOGS", str(catalog))
    assert main(["models", "list", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert any("nested deeper than 64 levels" in p for p in out["problems"]), out["problems"]


def test_installed_model_with_deeply_nested_model_json_does_not_crash_models_list(tmp_path, home, capsys):
    installed = home / "models" / "deep"
    installed.mkdir(parents=True)
    (installed / "model.json").write_text('{"title": ' + _nested(DEEP) + "}", encoding="utf-8")
    assert main(["models", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["models"]
    assert [r["title"] for r in rows if r["id"] == "deep"] == ["deep"]


def test_import_of_a_zip_holding_a_file_and_a_folder_of_one_name_is_refused(tmp_path, home, capsys):
    bundle = threshold_bundle().save(tmp_path / "model")
    archive = tmp_path / "clash.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in bundle.iterdir():
            zf.write(path, f"model/{path.name}")
        zf.writestr("model/x", b"a file")
        zf.writestr("model/x/y", b"and a file inside it")
    assert main(["models", "import", str(archive), "--id", "clash"]) == 2
    err = capsys.readouterr().err
    assert "'model/x' is a file and also the folder of 'model/x/y'" in err and "Traceback" not in err, err
    assert not (home / "models" / "clash").exists()


def test_huge_sparse_weights_file_is_refused_from_its_header(tmp_path, data_dir, capsys):
    bundle = threshold_bundle().save(tmp_path / "model")
    weights = bundle / "weights.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(20 * 1024 ** 3)  # 20 GB, sparse: the real tensors, then zeros that were never written
    with pytest.raises(InputError, match=r"weights\.safetensors is 21474836480 bytes, but its header describes \d+: "
                                         "the file is damaged"):
        load_bundle(bundle).load_state_dicts()
    rc = main(["segment", str(data_dir / "mr-breast" / "breast1_image.nrrd"), "-m", str(bundle),
               "-o", str(tmp_path / "out.nrrd"), "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and "its header describes" in err and "Traceback" not in err, err


def _with_network(bundle, **network):
    spec = json.loads((bundle / "model.json").read_text(encoding="utf-8"))
    spec["network"].update(network)
    (bundle / "model.json").write_text(json.dumps(spec), encoding="utf-8")
    return bundle


def test_weights_header_naming_tensors_the_network_lacks_is_refused_before_reading(tmp_path):
    from safetensors.torch import save_file
    import torch

    bundle = threshold_bundle().save(tmp_path / "model")
    save_file({"stem.conv.weight": torch.zeros(1), "huge": torch.zeros(4, 4)}, str(bundle / "weights.safetensors"))
    with pytest.raises(InputError, match="does not fit the network config: it holds tensor 'huge'"):
        load_bundle(bundle).build_models()


def test_a_network_config_too_large_to_build_is_refused_before_building(tmp_path, data_dir, capsys):
    bundle = _with_network(threshold_bundle().save(tmp_path / "model"), n_channels=4096)
    with pytest.raises(InputError, match="describes .* billion parameters, more than the 4 billion any MedNeXt has"):
        load_bundle(bundle).build_models()
    rc = main(["segment", str(data_dir / "mr-breast" / "breast1_image.nrrd"), "-m", str(bundle),
               "-o", str(tmp_path / "out.nrrd"), "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and "billion parameters" in err and "Traceback" not in err, err


def test_a_network_larger_than_the_memory_exits_3(tmp_path, data_dir, capsys, monkeypatch):
    from mednextv2 import weights_check

    monkeypatch.setattr(weights_check, "_physical_memory", lambda: 1024)  # a machine with 1 KiB
    bundle = threshold_bundle().save(tmp_path / "model")
    rc = main(["segment", str(data_dir / "mr-breast" / "breast1_image.nrrd"), "-m", str(bundle),
               "-o", str(tmp_path / "out.nrrd"), "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 3 and "more than this machine's 0.0 GiB" in err and "Traceback" not in err, err
