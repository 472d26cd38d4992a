"""MedNeXtV2Train: its CMakeLists lists every file the installed module needs, and only files that exist."""
from __future__ import annotations

import re
from pathlib import Path

MODULE = Path(__file__).resolve().parents[1] / "MedNeXtV2Train"


def _listed(variable: str):
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    block = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert block, f"{variable} is not set in MedNeXtV2Train/CMakeLists.txt"
    return [line.strip().replace("${MODULE_NAME}", "MedNeXtV2Train") for line in block.group(1).splitlines() if line.strip()]


def test_every_python_file_is_listed_and_exists():
    listed = _listed("MODULE_PYTHON_SCRIPTS")
    on_disk = sorted(str(p.relative_to(MODULE)) for p in MODULE.rglob("*.py") if "__pycache__" not in p.parts)
    assert sorted(listed) == on_disk
    assert len(listed) == len(set(listed))


def test_every_resource_is_listed_and_exists():
    listed = _listed("MODULE_PYTHON_RESOURCES")
    assert sorted(listed) == ["Resources/Icons/MedNeXtV2Train.png", "Resources/UI/MedNeXtV2Train.ui"]
    on_disk = sorted(str(p.relative_to(MODULE)) for p in (MODULE / "Resources").rglob("*") if p.is_file())
    assert sorted(listed) == on_disk
    icon = (MODULE / listed[0]).read_bytes()
    assert icon[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(icon[16:20], "big") == int.from_bytes(icon[20:24], "big") == 128


def test_module_is_built_and_its_self_test_registered():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "set(MODULE_NAME MedNeXtV2Train)" in text
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}", text)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    module_file = (MODULE / "MedNeXtV2Train.py").read_text(encoding="utf-8")
    assert "import MedNeXtV2TrainTest" in module_file and "class MedNeXtV2TrainTest" in (MODULE / "MedNeXtV2TrainLib" / "selftest.py").read_text(encoding="utf-8")
    top = (MODULE.parent / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "add_subdirectory(MedNeXtV2Train)" in top
