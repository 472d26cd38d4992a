"""The engine's layout, read from its imports with `ast`: two wings on a shared floor.

`store/` (catalog, downloads, the model cache, importers) and `inference/` (reading, preprocessing,
tile prediction, export) rest on the root's bundle contract and plumbing and on `network/`; the
root never reaches up into a wing, and the wings reach into each other only where the pipeline
resolves a model id through the store. Every import counts, also those made inside functions,
so a cycle hidden behind a lazy import is still found; only `if TYPE_CHECKING:` blocks are left
out, since they never run."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

from repo_folders import REPO

PACKAGE = REPO / "core" / "mednextv2"
WINGS = ("store", "inference")
UPPER = ("store", "inference", "train", "cli")  # the root and network/ import none of these
ALLOWED_BETWEEN_WINGS = {("mednextv2.inference.pipeline", "mednextv2.store.catalog")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:`."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                todo.extend(child.orelse)
            else:
                todo.append(child)


def engine_imports() -> Dict[str, Set[str]]:
    """Each engine module's imports of other engine modules (the longest name that is a module)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: Set[str] = set()
        for node in runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target != "mednextv2":
                    found.add(target)
                    break
        graph[name] = found
    return graph


def wing_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in UPPER + ("network",)) else ""


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph() -> Dict[str, Set[str]]:
    return engine_imports()


def test_the_walk_sees_the_engine(graph):
    # Guards the test itself: a walk that found nothing would pass every rule below.
    assert {"mednextv2.bundle", "mednextv2.store.catalog", "mednextv2.inference.pipeline"} <= set(graph)
    assert "mednextv2.store.catalog" in graph["mednextv2.inference.pipeline"]
    assert "mednextv2.bundle" in graph["mednextv2.store.importer"]


def test_no_import_cycle(graph):
    assert cycles(graph) == []


@pytest.mark.parametrize("wing", WINGS)
def test_a_wing_rests_on_the_contract_and_plumbing(graph, wing):
    strays = sorted((m, t) for m, targets in graph.items() if wing_of(m) == wing for t in targets
                    if wing_of(t) not in ("", "network", wing) and (m, t) not in ALLOWED_BETWEEN_WINGS)
    assert strays == []


def test_the_root_and_the_network_never_import_a_wing(graph):
    strays = sorted((m, t) for m, targets in graph.items() if wing_of(m) in ("", "network") for t in targets
                    if wing_of(t) in UPPER and m != "mednextv2.__main__")  # `python -m mednextv2` runs the CLI
    assert strays == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
