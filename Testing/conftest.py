"""Shared test settings: where the real data and the official-code fixtures live, and the fixtures
many test files use (an engine home of the test's own, a bone model, Slicer's stand-in app).

The real scans come from MEDNEXTV2_DATA, else ../shared/data beside the repository, else a
per-user cache folder that the first test needing them builds once from the public packages
(real_data.py says how). The official MedNeXt fixtures are in Testing/fixtures/official-mednext
unless MEDNEXTV2_FIXTURES says otherwise. Missing data is an error, never a skip.
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest

import real_data
from repo_folders import REPO


@pytest.fixture(scope="session")
def data_dir(request) -> Path:
    # Output capture off, so that a first run on a fresh clone shows that it is downloading.
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        return real_data.data_dir(say=lambda text: print("\n" + text, flush=True))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return real_data.fixtures_dir()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture()
def breast_dataset(tmp_path, data_dir) -> Path:
    """A one-case training dataset: the real breast MR and its lesion mask (`NAME_image`/`NAME_label`)."""
    folder = tmp_path / "dataset"
    folder.mkdir()
    for name in ("breast1_image.nrrd", "breast1_label.nrrd"):
        shutil.copyfile(data_dir / "mr-breast" / name, folder / name)
    return folder


@pytest.fixture()
def forget_new_modules():
    """Modules first imported during the test are dropped after it, so classes built on a test's
    stand-in base (slicer.ScriptedLoadableModule) never reach the next test."""
    import sys

    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """The engine's home folder, empty and the test's own; no user catalogs."""
    monkeypatch.setenv("MEDNEXTV2_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MEDNEXTV2_CATALOGS", raising=False)
    return tmp_path / "home"


@pytest.fixture()
def clean_env(home, monkeypatch):
    """`home`, and none of the user's proxy or plain-http settings reach the downloads."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("MEDNEXTV2_ALLOW_HTTP", raising=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A threshold model saved as a bundle: label "bone" above 300 HU."""
    from segment_fixtures import threshold_bundle  # torch: only the tests that use it pay for the import

    return threshold_bundle((300.0,), names=["bone"]).save(tmp_path_factory.mktemp("bundle") / "model")


@pytest.fixture()
def slicer(tmp_path):
    """The real `slicer` package with a fresh scene and slicer_stubs' app stand-in."""
    import slicer_stubs  # slicer-core: only the Slicer-module tests have it

    yield slicer_stubs.install(str(tmp_path / "slicer-temp"))
    slicer_stubs.uninstall()
