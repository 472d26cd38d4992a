"""Shared test settings: where the real data and the official-code fixtures live.

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

REPO = real_data.REPO


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
