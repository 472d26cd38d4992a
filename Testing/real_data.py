"""Where the tests find the real scans and the official-code fixtures.

Real scans, first match wins:
1. `MEDNEXTV2_DATA`, when set: that folder, as it is (an error names it when it is missing);
2. `../shared/data` beside the repository (this project's workplace and CI);
3. a per-user cache folder (`$XDG_CACHE_HOME/mednextv2/test-data`, default `~/.cache/...`),
   built once from the public packages by scripts/fetch_test_data.py (SHA-256 pinned) and
   reused by every later run. So the README's test command passes on a fresh clone.

Official-code fixtures: `MEDNEXTV2_FIXTURES`, else Testing/fixtures/official-mednext in the
repository (no public package ships them; see their README).
"""
from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import Callable, Mapping, Optional

from mednextv2.locks import FileLock
from repo_folders import REPO

DATA_ENV, FIXTURES_ENV = "MEDNEXTV2_DATA", "MEDNEXTV2_FIXTURES"
FETCH_SCRIPT = REPO / "scripts" / "fetch_test_data.py"


@lru_cache(maxsize=None)
def fetch_script():
    """scripts/fetch_test_data.py as a module (scripts/ is not a package); loaded once, so its
    FetchError is one class."""
    spec = importlib.util.spec_from_file_location("fetch_test_data", FETCH_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def user_cache_root(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mednextv2"


def cached_public_data(cache_root: Path, build: Optional[Callable[[Path], Path]] = None,
                       say: Callable[[str], None] = print) -> Path:
    """The cache's data folder, built from the public packages unless a complete one is there.
    A lock keeps two test runs from building it at the same time."""
    fetch = fetch_script()
    folder = cache_root / "test-data"
    with FileLock(cache_root / "test-data.lock"):
        if not fetch.is_complete(folder):
            say(f"real test data: none given ({DATA_ENV}) and none beside the repository; building {folder} "
                "once from pyradiomics 3.0.1 and nilearn 0.14.1 on PyPI (46 MB to download)")
            try:
                (build or fetch.build)(folder)
            except fetch.FetchError as e:
                raise FileNotFoundError(f"real test data could not be built in {folder}: {e}. Set {DATA_ENV} to a "
                                        f"folder made by `python {FETCH_SCRIPT.relative_to(REPO)} --out DIR`") from e
            if not fetch.is_complete(folder):
                raise FileNotFoundError(f"real test data in {folder} are incomplete after building")
    return folder


def data_dir(environ: Mapping[str, str] = os.environ, beside: Path = REPO.parent / "shared" / "data",
             cache_root: Optional[Path] = None, build: Optional[Callable[[Path], Path]] = None,
             say: Callable[[str], None] = print) -> Path:
    given = environ.get(DATA_ENV, "").strip()
    if given:
        path = Path(given).resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"real test data folder {path} (from {DATA_ENV}) does not exist. Unset {DATA_ENV} "
                                    "to let the tests build one, or make it with "
                                    f"`python {FETCH_SCRIPT.relative_to(REPO)} --out {path}`")
        return path
    if beside.is_dir():
        return beside.resolve()
    return cached_public_data(cache_root or user_cache_root(environ), build, say)


def fixtures_dir(environ: Mapping[str, str] = os.environ) -> Path:
    path = Path(environ.get(FIXTURES_ENV, "").strip() or REPO / "Testing" / "fixtures" / "official-mednext").resolve()
    if not (path / "manifest.json").is_file():
        raise FileNotFoundError(f"official MedNeXt fixtures not found at {path} (no manifest.json); "
                                f"{FIXTURES_ENV} must name a folder like Testing/fixtures/official-mednext")
    return path
