"""Where the tests find their data (real_data.py): the override, the folder beside the repository,
the per-user cache built once on a fresh clone, and the official-code fixtures in the repository.

The build itself (PyPI downloads) is swapped for a local stand-in here; the real one runs when the
suite starts on a clone with no data folder (README, "Run the tests")."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import real_data

FETCH = real_data.fetch_script()


def fake_build(calls):
    def build(folder: Path) -> Path:
        calls.append(folder)
        for name in FETCH.EXPECTED_FILES:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(b"scan")
        return folder
    return build


def test_fresh_clone_builds_the_data_once_into_the_user_cache(tmp_path):
    calls, env = [], {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    nothing_beside = tmp_path / "shared" / "data"
    first = real_data.data_dir(env, nothing_beside, build=fake_build(calls), say=lambda _: None)
    assert first == tmp_path / "cache" / "mednextv2" / "test-data" and len(calls) == 1
    assert real_data.data_dir(env, nothing_beside, build=fake_build(calls), say=lambda _: None) == first
    assert len(calls) == 1  # reused, not fetched again
    (first / FETCH.EXPECTED_FILES[-1]).unlink()  # an incomplete folder is completed
    real_data.data_dir(env, nothing_beside, build=fake_build(calls), say=lambda _: None)
    assert len(calls) == 2 and FETCH.is_complete(first)


def test_a_failed_build_is_an_error_that_says_what_to_do(tmp_path):
    def offline(folder):
        raise FETCH.FetchError("cannot download pyradiomics-3.0.1.tar.gz from PyPI: offline")
    with pytest.raises(FileNotFoundError, match=r"could not be built in .*test-data: cannot download.*MEDNEXTV2_DATA"):
        real_data.data_dir({"XDG_CACHE_HOME": str(tmp_path)}, tmp_path / "none", build=offline, say=lambda _: None)


def test_the_environment_and_the_folder_beside_come_first(tmp_path):
    beside = tmp_path / "shared" / "data"
    beside.mkdir(parents=True)
    never = fake_build([])
    assert real_data.data_dir({}, beside, cache_root=tmp_path / "c", build=never) == beside
    given = tmp_path / "mine"
    given.mkdir()
    assert real_data.data_dir({"MEDNEXTV2_DATA": str(given)}, beside, build=never) == given
    with pytest.raises(FileNotFoundError, match=r"missing.*from MEDNEXTV2_DATA\) does not exist"):
        real_data.data_dir({"MEDNEXTV2_DATA": str(tmp_path / "missing")}, beside, build=never)
    assert not (tmp_path / "c").exists()


def test_the_fetch_script_makes_every_file_of_the_data_folder(data_dir):
    # Whatever folder this run uses (../shared/data in the workplace), the script rebuilds all of it.
    files = {str(p.relative_to(data_dir)).replace("\\", "/") for p in data_dir.rglob("*")
             if p.is_file() and p.name != "README.md" and not p.name.startswith(".")}
    assert files == set(FETCH.EXPECTED_FILES)


def test_official_fixtures_ship_in_the_repository(fixtures_dir, tmp_path):
    shipped = real_data.REPO / "Testing" / "fixtures" / "official-mednext"
    assert real_data.fixtures_dir({}) == shipped
    sums = dict(reversed(line.split()) for line in (shipped / "SHA256SUMS").read_text().splitlines())
    for name, digest in sums.items():
        assert hashlib.sha256((shipped / name).read_bytes()).hexdigest() == digest, name
    manifest = json.loads((shipped / "manifest.json").read_text(encoding="utf-8"))
    needed = {f"{c['name']}.{kind}.safetensors" for c in manifest["cases"] for kind in ("weights", "io")}
    needed |= {f"{manifest['upkern']['name']}.{k}.weights.safetensors" for k in ("k3", "k5-upkern")}
    assert needed | {"manifest.json"} == set(sums)  # every file used, nothing else
    with pytest.raises(FileNotFoundError, match="MEDNEXTV2_FIXTURES"):
        real_data.fixtures_dir({"MEDNEXTV2_FIXTURES": str(tmp_path)})


BENCHMARK_PROBE = """
import sys
from pathlib import Path
sys.path[:0] = {paths!r}
import real_data
real_data.data_dir = lambda: Path({sentinel!r})
import bench_segment_engines, bench_segment_fast, bench_train, bench_nnunet_agreement
print([str(m.DATA) for m in (bench_segment_engines, bench_segment_fast, bench_train)])
print(str(bench_nnunet_agreement.CASES["lung"][0]))
"""


def test_benchmarks_find_the_data_as_the_tests_do(tmp_path):
    """No benchmark computes its own ../shared/data: on a fresh clone they use the same cache."""
    import subprocess
    import sys
    testing = Path(real_data.__file__).resolve().parent
    sentinel = str(tmp_path / "data")
    paths = [str(testing), str(testing / "benchmarks"), str(real_data.REPO / "core")]
    out = subprocess.run([sys.executable, "-c", BENCHMARK_PROBE.format(paths=paths, sentinel=sentinel)],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-2] == repr([sentinel] * 3) and lines[-1] == f"{sentinel}/ct-lung/lung1_image.nrrd"
