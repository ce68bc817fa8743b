"""No import cycle inside the package, function-level imports included.

Every ``import`` statement of every module counts, wherever it stands (a function-level import
hides a cycle from the interpreter until that function runs, and an import under
``if TYPE_CHECKING:`` hides it always, but neither from a reader or a type checker). The one
relation left out is a module importing a package it is part of (``from
lpa_domainbed.algorithms import ALGORITHMS`` in ``lpa_domainbed/algorithms/lpa.py``: Python
always initializes a package before its modules)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "lpa_domainbed"


def _module_name(path: Path, top: Path) -> str:
    parts = path.relative_to(top).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: package modules it imports}`` from the source, every import statement."""
    files = {_module_name(p, root.parent): p for p in root.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's own package
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(package[:len(package) - node.level + 1] + [base]).strip(".")
                targets.add(base)
                targets |= {f"{base}.{a.name}" for a in node.names}
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = {t for t in targets if t in files and t != name and t not in ancestors}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle found by a depth-first search (each reported once)."""
    found, seen = [], set()
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycle = path[path.index(nxt):] + [nxt]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    found.append(cycle)
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "lpa_domainbed.algorithms.base" in graph  # the walk found the package
    assert cycles(graph) == []


def test_an_added_cycle_is_found_also_through_a_function_level_import(tmp_path):
    package = tmp_path / "lpa_domainbed"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from lpa_domainbed.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from lpa_domainbed import a\n")
    (package / "sub" / "c.py").write_text("from lpa_domainbed.sub import b\n")  # parent: fine
    (package / "sub" / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lpa_domainbed import a\n")
    (package / "e.py").write_text("from lpa_domainbed.sub import d\n")  # no cycle
    (package / "f.py").write_text("from lpa_domainbed import g\n")
    (package / "g.py").write_text(  # a cycle through an annotation-only import counts too
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lpa_domainbed import f\n")
    assert cycles(import_graph(package)) == [
        ["lpa_domainbed.a", "lpa_domainbed.sub.b", "lpa_domainbed.a"],
        ["lpa_domainbed.f", "lpa_domainbed.g", "lpa_domainbed.f"]]
