"""What a new user reads first: every option's help, pointers that work for a pip install, the
README's examples against what the code does."""
from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

from mednextv2.cli import build_parser
from mednextv2.train import demo

REPO = Path(__file__).resolve().parents[1]


def _parsers(parser: argparse.ArgumentParser, name: str = "mednextv2"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_option_has_help_and_no_help_points_into_the_repository():
    for name, parser in _parsers(build_parser()):
        for action in parser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                assert action.help, f"{name} {'/'.join(action.option_strings)} has no help"
        text = parser.format_help()
        # A pip-installed user has no docs/ folder: point to the project's web pages instead.
        assert "docs/" not in text.replace("/blob/main/docs/", ""), f"{name}: {text}"


def test_segment_model_help_names_installed_ids():
    segment = dict(_parsers(build_parser()))["mednextv2 segment"]
    help_text = next(a.help for a in segment._actions if "-m" in a.option_strings)
    assert "installed" in help_text and "models list" in help_text


def test_messages_point_to_the_project_url_not_to_a_docs_file():
    for path in (REPO / "core" / "mednextv2").rglob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            code = line.split("#", 1)[0]
            if re.search(r"""["'].*docs/models\.md""", code) and "MODELS_DOC_URL" not in code:
                raise AssertionError(f"{path}: a message points to docs/models.md: {line.strip()}")


def test_the_demo_folder_is_ignored_by_git():
    for folder in ("mednextv2-demo", "mednextv2-demo-2"):
        done = subprocess.run(["git", "check-ignore", "-q", "--no-index", f"{folder}/anterior_overlay.png"], cwd=REPO)
        assert done.returncode == 0, f"{folder}/ is not in .gitignore"


def test_readme_examples_match_the_code():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    # The demo segments without TTA (its default), and the README's timing says so.
    import inspect

    assert inspect.signature(demo.run_demo).parameters["tta"].default is False
    assert dict(_parsers(build_parser()))["mednextv2 demo"].parse_args([]).tta is False
    timing = re.search(r"\d+ s segmenting[^)]*\)", readme).group(0)
    assert "without mirroring TTA" in timing and "mirrors by default" in timing
    # The Slicer Python example names a bundle path, not a model id that no catalog lists.
    example = re.search(r"MedNeXtV2SegmentLogic\(\)\.segment\(volume, \"([^\"]+)\"", readme).group(1)
    assert "/" in example, example
