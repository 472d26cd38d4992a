"""The catalog (shipped + user catalogs), the cache, `resolve_model`, and `mednextv2 models`."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from mednextv2.bundle import load_bundle
from mednextv2.cli import main
from mednextv2.errors import InputError
from mednextv2.schema import load_schema, schema_errors
from mednextv2.store.cache import ModelCache, check_model_id, default_home
from mednextv2.store.catalog import load_catalog, parse_catalog, resolve_model
from http_test_server import FileServer, catalog_entry, catalog_json, self_signed_tls, tiny_bundle_zip

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> bytes:
    return tiny_bundle_zip(tmp_path_factory.mktemp("tiny") / "tiny.zip")


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_shipped_catalog_is_valid_and_lists_only_real_models():
    data = json.loads((REPO / "core" / "mednextv2" / "catalog.json").read_text(encoding="utf-8"))
    assert schema_errors(data, load_schema("catalog.schema.json")) == []
    assert data["catalog_format"] == 1 and data["catalog_version"]
    # No MedNeXt-v2 weights are public yet (docs/models.md): nothing may be listed until they are.
    assert data["models"] == []
    catalog = load_catalog(ModelCache.open())
    assert list(catalog) == [] and catalog.problems == ()


def test_schema_rejects_bad_entries(tiny):
    good = catalog_entry("ok-model", tiny, ["https://example.org/m.zip"])
    parse_catalog(catalog_json([good]), "good.json")
    cases = {
        "id": ("../evil", r"id.*does not match"),
        "urls": (["file:///etc/passwd"], r"urls\[0\].*does not match"),
        "sha256": ("abc", r"sha256.*does not match"),
        "size": (0, r"size: must be >= 1"),
        "modality": ("PET", r"modality: must be one of"),
    }
    for field, (value, message) in cases.items():
        with pytest.raises(InputError, match=message):
            parse_catalog(catalog_json([dict(good, **{field: value})]), "bad.json")
    missing = {k: v for k, v in good.items() if k != "license"}
    with pytest.raises(InputError, match=r"(?s)bad\.json.*models\[0\]\.license: required field is missing"):
        parse_catalog(catalog_json([missing]), "bad.json")
    with pytest.raises(InputError, match="more than once"):
        parse_catalog(catalog_json([good, good]), "dup.json")
    with pytest.raises(InputError, match="not valid JSON"):
        parse_catalog("{", "broken.json")


def test_model_ids_can_never_leave_the_cache(tmp_path):
    cache = ModelCache.open(tmp_path / "home")
    for bad in ("..", "../x", "a/b", "a\\b", "/abs", "", ".hidden", "con", "x" * 65):
        with pytest.raises(InputError):
            cache.model_dir(bad)
    assert check_model_id("lung-tumor_ct.v2") == "lung-tumor_ct.v2"


def test_home_folder_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDNEXTV2_HOME", str(tmp_path / "elsewhere"))
    assert default_home() == (tmp_path / "elsewhere").resolve()
    monkeypatch.delenv("MEDNEXTV2_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_home() == tmp_path / "xdg" / "mednextv2"


def test_user_catalogs_from_env_config_and_cli_merge_in_order(tmp_path, tiny, monkeypatch):
    def write(name, entries):
        path = tmp_path / name
        path.write_text(catalog_json(entries))
        return path

    a = write("a.json", [catalog_entry("m1", tiny, ["https://a.org/m1.zip"], version="1")])
    b = write("b.json", [catalog_entry("m1", tiny, ["https://b.org/m1.zip"], version="2"),
                         catalog_entry("m2", tiny, ["https://b.org/m2.zip"])])
    c = write("c.json", [catalog_entry("m3", tiny, ["https://c.org/m3.zip"])])
    cache = ModelCache.open()
    cache.home.mkdir(parents=True)
    cache.config_path.write_text(json.dumps({"catalogs": [str(b)]}))
    monkeypatch.setenv("MEDNEXTV2_CATALOGS", f"{a}, {tmp_path / 'missing.json'}")
    catalog = load_catalog(cache, [str(c)])
    assert sorted(catalog.entries) == ["m1", "m2", "m3"]
    assert catalog.get("m1").version == "2" and catalog.get("m1").source == str(b)  # config beats environment
    assert len(catalog.problems) == 1 and "missing.json" in catalog.problems[0]
    with pytest.raises(InputError, match=r"(?s)unknown model id .nope.; catalog models: m1, m2, m3.*missing\.json"):
        catalog.get("nope")


def _serve_catalog_over_http(server, tiny, monkeypatch):
    server.add("/tiny.zip", tiny)
    server.add("/catalog.json", catalog_json([catalog_entry("tiny-ct", tiny, [server.url("/tiny.zip")])]).encode())
    monkeypatch.setenv("MEDNEXTV2_CATALOGS", server.url("/catalog.json"))


def _http_warnings(caplog):
    return [r for r in caplog.records if r.levelname == "WARNING" and "over plain http (MEDNEXTV2_ALLOW_HTTP=1)" in r.message]


def test_plain_http_catalog_is_refused_unless_allowed(tmp_path, tiny, monkeypatch, capsys, caplog):
    # A catalog over http lets anyone on the path choose the checksums, and so the model bytes.
    home = tmp_path / "home"
    with FileServer() as server:
        _serve_catalog_over_http(server, tiny, monkeypatch)
        code, out, _ = run_cli(capsys, "models", "list", "--json")
        listed = json.loads(out)
        assert code == 0 and listed["models"] == []
        assert len(listed["problems"]) == 1 and re.search(
            r"catalog http://127\.0\.0\.1:\d+/catalog\.json is plain http, which is refused.*https://.*"
            r"MEDNEXTV2_ALLOW_HTTP=1", listed["problems"][0])
        code, _, err = run_cli(capsys, "models", "download", "tiny-ct")
        assert code == 2 and "unknown model id 'tiny-ct'" in err and "plain http, which is refused" in err
        for value in ("0", "yes", "true"):  # only the documented opt-in
            monkeypatch.setenv("MEDNEXTV2_ALLOW_HTTP", value)
            assert "tiny-ct" not in load_catalog(ModelCache.open())
        assert server.requests_for("/catalog.json") == [] and server.requests_for("/tiny.zip") == []
        assert not (home / "models").exists() or list((home / "models").iterdir()) == []

        monkeypatch.setenv("MEDNEXTV2_ALLOW_HTTP", "1")
        caplog.clear()
        for _ in range(2):
            assert "tiny-ct" in load_catalog(ModelCache.open())
        assert len(_http_warnings(caplog)) == 2  # a warning on every use
        caplog.clear()
        code, out, _ = run_cli(capsys, "models", "download", "tiny-ct")
        assert code == 0 and out.strip() == str(home / "models" / "tiny-ct")
        assert len(_http_warnings(caplog)) == 2  # reading the catalog, and installing from it


def test_https_catalog_may_list_http_model_urls_but_not_redirect_to_http(tmp_path, tiny, monkeypatch, caplog):
    tls, cert = self_signed_tls(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    with FileServer(tls=tls) as secure, FileServer() as plain:
        plain.add("/tiny.zip", tiny)
        text = catalog_json([catalog_entry("tiny-ct", tiny, [plain.url("/tiny.zip")])]).encode()
        secure.add("/catalog.json", text)
        plain.add("/catalog.json", text)
        secure.add("/moved.json", b"", location=plain.url("/catalog.json"))
        catalog = load_catalog(ModelCache.open(), [secure.url("/catalog.json"), secure.url("/moved.json")])
        # The hash from the https catalog protects the http model download.
        path = resolve_model("tiny-ct", catalogs=[secure.url("/catalog.json")])
        assert load_bundle(path).id == "tiny-ct" and len(plain.requests_for("/tiny.zip")) == 1
    assert "tiny-ct" in catalog and catalog.sources[1:] == (secure.url("/catalog.json"),)
    assert len(catalog.problems) == 1 and re.search(
        r"moved\.json redirected to plain http \(http://127\.0\.0\.1:\d+/catalog\.json\); refused", catalog.problems[0])
    assert _http_warnings(caplog) == []


def test_catalog_redirect_chain_through_plain_http_is_refused_at_the_http_hop(tmp_path, tiny, monkeypatch, caplog):
    # https -> http -> https: the final URL is https, but the plain-http hop could have chosen the catalog.
    tls, cert = self_signed_tls(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    with FileServer(tls=tls) as secure, FileServer() as plain:
        text = catalog_json([catalog_entry("tiny-ct", tiny, [secure.url("/tiny.zip")])]).encode()
        secure.add("/catalog.json", text)
        plain.add("/hop.json", b"", location=secure.url("/catalog.json"))
        secure.add("/start.json", b"", location=plain.url("/hop.json"))
        catalog = load_catalog(ModelCache.open(), [secure.url("/start.json")])
        assert plain.requests_for("/hop.json") == []  # refused before the plain-http request is sent
        assert secure.requests_for("/catalog.json") == []
    assert "tiny-ct" not in catalog and len(catalog.problems) == 1
    assert re.search(r"start\.json redirected to plain http \(http://127\.0\.0\.1:\d+/hop\.json\); refused",
                     catalog.problems[0])


def test_model_download_redirect_to_another_scheme_is_refused(tmp_path, tiny, monkeypatch):
    from mednextv2.store.download import DownloadSettings, download_verified

    with FileServer() as server:
        server.add("/m.zip", b"", location="ftp://127.0.0.1/m.zip")
        with pytest.raises(InputError, match=r"m\.zip redirected to ftp \(ftp://127\.0\.0\.1/m\.zip\); refused"):
            download_verified([server.url("/m.zip")], tmp_path / "m.zip.part", "0" * 64, len(tiny),
                              settings=DownloadSettings(retries=0, backoff=0.01))


def test_models_list_and_info_print_only_printable_text(tmp_path, tiny, capsys):
    # A catalog (any user catalog, maybe remote) must not drive the terminal: clear the screen and claim success.
    spoof = "\x1b[2J\x1b[Hall models verified\x9b31m\u202e"
    entry = catalog_entry("tiny-ct", tiny, ["https://example.org/m.zip"], title=spoof,
                          license="MIT\x07", citation="cite\r\x1b[1Aover")
    entry["labels"][0]["name"] = "tumor\x1b]0;owned\x07"
    (tmp_path / "catalog.json").write_text(catalog_json([entry]), encoding="utf-8")
    code, out, err = run_cli(capsys, "models", "--catalog", str(tmp_path / "catalog.json"), "list")
    assert code == 0 and "?[2J?[Hall models verified?31m?" in out
    code, info, _ = run_cli(capsys, "models", "--catalog", str(tmp_path / "catalog.json"), "info", "tiny-ct")
    assert code == 0 and "1=tumor?]0;owned?" in info and "cite??[1Aover" in info
    for text in (out, err, info):
        assert all(c.isprintable() or c == "\n" for c in text), repr(text)
    code, out, _ = run_cli(capsys, "models", "--catalog", str(tmp_path / "catalog.json"), "list", "--json")
    assert json.loads(out)["models"][0]["title"] == spoof and "\x1b" not in out  # JSON escapes, keeps the text


def test_download_refuses_to_replace_an_imported_model_without_replace(tmp_path, tiny, monkeypatch, capsys):
    from http_test_server import tiny_bundle_zip

    home = tmp_path / "home"
    mine = tiny_bundle_zip(tmp_path / "mine.zip", seed=7)  # the user's own model, under the catalog's id
    code, _, _ = run_cli(capsys, "models", "import", str(tmp_path / "mine.zip"), "--id", "tiny-ct")
    assert code == 0
    before = {p.name: p.read_bytes() for p in (home / "models" / "tiny-ct").iterdir()}
    monkeypatch.setenv("MEDNEXTV2_ALLOW_HTTP", "1")
    with FileServer() as server:
        server.add("/tiny.zip", tiny)
        server.add("/catalog.json", catalog_json([catalog_entry("tiny-ct", tiny, [server.url("/tiny.zip")])]).encode())
        catalog = server.url("/catalog.json")
        code, out, err = run_cli(capsys, "models", "--catalog", catalog, "download", "tiny-ct")
        assert code == 2 and out == "" and server.requests_for("/tiny.zip") == []
        assert re.search(r"'tiny-ct' is already installed in .*tiny-ct \(imported from .*mine\.zip\), not downloaded "
                         r"from a catalog.*--replace", err)
        assert {p.name: p.read_bytes() for p in (home / "models" / "tiny-ct").iterdir()} == before
        code, _, _ = run_cli(capsys, "models", "--catalog", catalog, "download", "tiny-ct", "--force")
        assert code == 2  # --force re-downloads a catalog model; it does not replace the user's own
        code, out, _ = run_cli(capsys, "models", "--catalog", catalog, "download", "tiny-ct", "--replace")
        assert code == 0 and ModelCache.open().install_info("tiny-ct")["source"] == "catalog"
    assert mine != tiny


def test_user_catalog_over_http_download_and_resolve(tmp_path, tiny, monkeypatch, capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("MEDNEXTV2_ALLOW_HTTP", "1")  # plain http only with the opt-in (previous test)
    with FileServer() as server:
        _serve_catalog_over_http(server, tiny, monkeypatch)

        code, out, _ = run_cli(capsys, "models", "list", "--json")
        listed = json.loads(out)
        assert code == 0 and listed["problems"] == []
        assert [(m["id"], m["installed"], m["size"]) for m in listed["models"]] == [("tiny-ct", "no", len(tiny))]

        code, out, _ = run_cli(capsys, "models", "--progress", "json", "download", "tiny-ct")
        assert code == 0
        lines = out.strip().splitlines()
        assert lines[-1] == str(home / "models" / "tiny-ct")
        stages = {json.loads(line)["stage"] for line in lines[:-1]}
        assert {"download", "verify"} <= stages

        code, out, _ = run_cli(capsys, "models", "list")
        assert "tiny-ct" in out and "yes" in out and "KB" in out
        # A second download is a no-op: the verified model is already in the cache.
        run_cli(capsys, "models", "download", "tiny-ct")
        assert len(server.requests_for("/tiny.zip")) == 1
    # The server is gone: the saved copy of the catalog and the installed model still work offline.
    catalog = load_catalog(ModelCache.open())
    assert "tiny-ct" in catalog and catalog.problems == ()
    assert resolve_model("tiny-ct") == home / "models" / "tiny-ct"
    info = json.loads((home / "models" / "tiny-ct" / ".install.json").read_text(encoding="utf-8"))
    assert info["sha256"] == catalog.get("tiny-ct").sha256 and info["source"] == "catalog"
    assert load_bundle(resolve_model("tiny-ct")).id == "tiny-ct"


def test_resolve_model_downloads_catalog_models_on_demand(tmp_path, tiny, monkeypatch):
    with FileServer() as server:
        server.add("/tiny.zip", tiny)
        catalog = tmp_path / "catalog.json"
        catalog.write_text(catalog_json([catalog_entry("tiny-ct", tiny, [server.url("/tiny.zip")])]))
        with pytest.raises(InputError, match="not downloaded yet.*mednextv2 models download tiny-ct"):
            resolve_model("tiny-ct", catalogs=[str(catalog)], download=False)
        path = resolve_model("tiny-ct", catalogs=[str(catalog)])
    assert path == ModelCache.open().model_dir("tiny-ct") and load_bundle(path).build_models("cpu")


def test_resolve_model_paths_and_errors(tmp_path, tiny):
    zipped = tmp_path / "b.zip"
    zipped.write_bytes(tiny)
    assert resolve_model(zipped) == zipped.resolve()
    assert resolve_model(str(zipped)) == zipped.resolve()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="without model.json.*mednextv2 models import"):
        resolve_model(tmp_path / "empty")
    with pytest.raises(InputError, match="no such file or folder"):
        resolve_model(str(tmp_path / "nothing.zip"))
    with pytest.raises(InputError, match=r"unknown model 'no-such-model'.*installed: none.*models list"):
        resolve_model("no-such-model")
    with pytest.raises(InputError, match="neither an existing bundle path nor a valid model id"):
        resolve_model("bad id!")


def test_cli_import_path_info_remove(tmp_path, tiny, capsys):
    zipped = tmp_path / "b.zip"
    zipped.write_bytes(tiny)
    code, out, err = run_cli(capsys, "models", "import", str(zipped), "--id", "my-model")
    home = Path(os.environ["MEDNEXTV2_HOME"])
    assert code == 0 and out.strip() == str(home / "models" / "my-model") and "-m my-model" in err
    assert load_bundle(home / "models" / "my-model").id == "my-model"  # the id inside follows --id
    code, _, err = run_cli(capsys, "models", "import", str(zipped), "--id", "my-model")
    assert code == 2 and "already installed" in err and "--replace" in err
    assert run_cli(capsys, "models", "import", str(zipped), "--id", "my-model", "--replace")[0] == 0

    code, out, _ = run_cli(capsys, "models", "path")
    assert out.strip() == str(home)
    code, out, _ = run_cli(capsys, "models", "path", "my-model")
    assert out.strip() == str(home / "models" / "my-model")
    code, out, _ = run_cli(capsys, "models", "info", "my-model", "--json")
    info = json.loads(out)
    assert info["installed"]["source"] == "import" and info["installed"]["model"]["labels"][0]["name"] == "tumor"
    assert info["installed"]["path"] == str(home / "models" / "my-model")
    assert info["installed"]["origin"] == str(zipped.resolve())
    code, out, _ = run_cli(capsys, "models", "list")
    assert "my-model" in out and "import" in out

    assert run_cli(capsys, "models", "remove", "my-model")[0] == 0
    assert not (home / "models" / "my-model").exists()
    code, _, err = run_cli(capsys, "models", "remove", "my-model")
    assert code == 2 and "not installed" in err
    code, _, err = run_cli(capsys, "models", "info", "nothing-here")
    assert code == 2 and "unknown model id 'nothing-here'" in err


def test_models_list_works_before_torch_is_installed(tmp_path):
    # The Slicer panel lists and downloads models before it installs PyTorch.
    import subprocess
    import sys

    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'):\n"
            "            raise ImportError('torch is not installed')\n"
            "sys.meta_path.insert(0, Block())\n"
            "from mednextv2.cli import main\n"
            "sys.exit(main(['models', '--home', sys.argv[1], 'list', '--json']))\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "h")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["models"] == []
