"""The extension build ships every file the Segment module needs, and the index JSON agrees.

Parses the CMake files as text (CMake itself needs a Slicer build tree, which CI does not have).
"""
from __future__ import annotations

import ast
import json
import re

from repo_folders import CORE_DIR, REPO, SEGMENT_DIR

MODULE = "MedNeXtV2Segment"


def cmake_set(text: str, variable: str, module_name: str = MODULE) -> list:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    items = [line.split("#")[0].strip() for line in match.group(1).splitlines()]
    return [i.replace("${MODULE_NAME}", module_name) for i in items if i]


def module_cmake() -> str:
    return (SEGMENT_DIR / "CMakeLists.txt").read_text(encoding="utf-8")


def top_cmake() -> str:
    return (REPO / "CMakeLists.txt").read_text(encoding="utf-8")


def test_module_cmake_lists_every_file_and_every_listed_file_exists():
    text = module_cmake()
    assert re.search(r"set\(MODULE_NAME\s+MedNeXtV2Segment\)", text)
    scripts, resources = cmake_set(text, "MODULE_PYTHON_SCRIPTS"), cmake_set(text, "MODULE_PYTHON_RESOURCES")
    listed = set(scripts) | set(resources)
    missing_on_disk = sorted(p for p in listed if not (SEGMENT_DIR / p).is_file())
    assert not missing_on_disk, f"listed in CMake but absent: {missing_on_disk}"
    shipped = {p.relative_to(SEGMENT_DIR).as_posix() for p in SEGMENT_DIR.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.parts[len(SEGMENT_DIR.parts)] != "Testing"
               and p.name != "CMakeLists.txt"}
    assert shipped - listed == set(), f"in the module folder but not installed: {sorted(shipped - listed)}"
    assert all(s.endswith(".py") for s in scripts) and not any(r.endswith(".py") for r in resources)


def test_module_registers_its_self_test_and_generic_tests():
    text = module_cmake()
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert re.search(r"if\(BUILD_TESTING\).*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text, re.S)
    module_source = (SEGMENT_DIR / f"{MODULE}.py").read_text(encoding="utf-8")
    assert re.search(rf"import {MODULE}Test\b", module_source), "the Test class must be reachable from the module file"
    assert "class MedNeXtV2SegmentTest(ScriptedLoadableModuleTest)" in (SEGMENT_DIR / f"{MODULE}Lib" / "selftest.py").read_text(encoding="utf-8")
    assert (SEGMENT_DIR / "Testing" / "CMakeLists.txt").read_text(encoding="utf-8").strip() == "add_subdirectory(Python)"
    assert (SEGMENT_DIR / "Testing" / "Python" / "CMakeLists.txt").is_file()


def test_module_file_stays_a_shell():
    lines = (SEGMENT_DIR / f"{MODULE}.py").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 110, f"{MODULE}.py has {len(lines)} lines; move code into {MODULE}Lib"
    tree = ast.parse("\n".join(lines))
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {MODULE, f"{MODULE}Widget"} <= classes


def test_python_files_parse_as_python_3_9():
    # Slicer 5.6 ships Python 3.9: no match statements, no 3.10+ syntax.
    for path in [SEGMENT_DIR / f"{MODULE}.py", *(SEGMENT_DIR / f"{MODULE}Lib").glob("*.py")]:
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


def test_icon_is_128_square_png():
    from PIL import Image

    with Image.open(SEGMENT_DIR / "Resources" / "Icons" / f"{MODULE}.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)


def test_top_level_cmake_follows_the_extension_template():
    text = top_cmake()
    order = ["project(MedNeXtV2)", "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
             "add_subdirectory(MedNeXtV2Segment)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
             "include(${Slicer_EXTENSION_CPACK})"]
    positions = [text.index(item) for item in order]
    assert positions == sorted(positions)
    assert "add_subdirectory(MedNeXtV2Train)" in text
    for variable in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert re.search(rf'set\(EXTENSION_{variable} "[^"]+"\)', text), variable
    for url_var in ("ICONURL", "SCREENSHOTURLS"):
        url = re.search(rf'set\(EXTENSION_{url_var} "([^"]+)"\)', text).group(1)
        local = url.split("/main/", 1)[1]
        assert (REPO / local).is_file(), f"EXTENSION_{url_var} points at {local}, which is not in the repository"
    assert (REPO / "LICENSE").read_text(encoding="utf-8").lstrip().startswith("Apache License")


def test_core_package_is_installed_with_the_extension():
    text = top_cmake()
    assert "ctkMacroCompilePythonScript(" in text
    for line in ("SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR}/core", "NO_INSTALL_SUBDIR",
                 "DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}",
                 "INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}",
                 'SCRIPTS "${MedNeXtV2_CORE_SCRIPTS}"', 'RESOURCES "${MedNeXtV2_CORE_RESOURCES}"'):
        assert line in text, line
    # Apply the CMake rules (glob everything, drop caches, split .py from the rest) in Python.
    assert "${CMAKE_CURRENT_SOURCE_DIR}/core/mednextv2/*)" in text
    filters = dict(re.findall(r'list\(FILTER (MedNeXtV2_CORE_\w+) (?:INCLUDE|EXCLUDE) REGEX "([^"]+)"\)', text))
    assert set(filters) == {"MedNeXtV2_CORE_FILES", "MedNeXtV2_CORE_SCRIPTS", "MedNeXtV2_CORE_RESOURCES"}
    cmake_regex = {k: re.compile(v.replace("\\\\", "\\")) for k, v in filters.items()}
    files = [p.relative_to(CORE_DIR).as_posix() for p in (CORE_DIR / "mednextv2").rglob("*") if p.is_file()]
    files = [f for f in files if not cmake_regex["MedNeXtV2_CORE_FILES"].search(f)]
    scripts = {f for f in files if cmake_regex["MedNeXtV2_CORE_SCRIPTS"].search(f)}
    resources = {f for f in files if not cmake_regex["MedNeXtV2_CORE_RESOURCES"].search(f)}
    assert "mednextv2/__main__.py" in scripts and "mednextv2/cli/segment.py" in scripts
    assert "mednextv2/catalog.json" in resources and not any(f.endswith(".py") for f in resources)
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in scripts | resources)
    # pyproject's package data must be a subset of what the extension installs.
    for pattern in ("*.json", "schemas/*.json", "data/**/*"):
        for path in (CORE_DIR / "mednextv2").glob(pattern):
            if path.is_file():
                assert path.relative_to(CORE_DIR).as_posix() in resources, path


def extension_depends() -> list:
    value = re.search(r'set\(EXTENSION_DEPENDS "([^"]*)"\)', top_cmake()).group(1)
    return [] if value == "NA" else value.replace(";", " ").split()


def test_index_json_agrees_with_cmake():
    project = re.search(r"project\((\w+)\)", top_cmake()).group(1)
    index = REPO / f"{project}.json"
    assert index.is_file(), f"the Extensions Index description must be named {project}.json"
    data = json.loads(index.read_text(encoding="utf-8"))
    # Keys of Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "dicom_support_rule", "build_subdirectory", "enabled", "tier"}
    assert {"$schema", "category", "scm_url"} <= set(data) <= allowed
    assert data["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json")
    assert sorted(data.get("build_dependencies", [])) == sorted(extension_depends()) == ["PyTorch"]
    assert data["category"] == re.search(r'set\(EXTENSION_CATEGORY "([^"]+)"\)', top_cmake()).group(1)
    assert isinstance(data.get("tier", 1), int) and 1 <= data.get("tier", 1) <= 5
    assert data["scm_url"].startswith("https://")
