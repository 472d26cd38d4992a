"""The README stays a short user's document, and no link in it or in docs/ leads nowhere: every
relative link names a file of the repository and, with a #fragment, a heading of that file."""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 300

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _documents():
    return [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))


def _prose_lines(text: str):
    """Lines outside fenced code blocks, where a '#' or '[x](y)' is code, not markdown."""
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LM" or unicodedata.category(c) == "Nd")
    return kept.replace(" ", "-")


def _anchors(path: Path) -> set:
    anchors, seen = set(), {}
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _relative_links(path: Path):
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
                yield target


def test_slug_follows_github():
    assert _slug("Network (`Testing/benchmarks/bench_network.py`)") == "network-testingbenchmarksbench_networkpy"
    assert _slug("Fine-tuning from AMAES's pretrained MedNeXt encoders (`train --base FILE.pth`)") == (
        "fine-tuning-from-amaess-pretrained-mednext-encoders-train---base-filepth")


def test_readme_is_short():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; tables, history and method belong in docs/ (at most {README_MAX_LINES})")


def test_every_relative_link_points_to_an_existing_file_and_heading():
    broken = []
    for document in _documents():
        for target in _relative_links(document):
            file_part, _, fragment = target.partition("#")
            linked = (document.parent / file_part).resolve() if file_part else document
            if not linked.exists():
                broken.append(f"{document.relative_to(REPO)}: {target} (no such file)")
            elif fragment and linked.suffix == ".md" and fragment not in _anchors(linked):
                broken.append(f"{document.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_check_sees_links():
    # A check that finds no links would pass whatever the documents say.
    assert len(list(_relative_links(REPO / "README.md"))) >= 10
