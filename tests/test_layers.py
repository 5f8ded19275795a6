"""The layers of mwnet import downwards only, read from the source with ``ast``.

Every ``import`` and ``from ... import`` statement counts, at module level or inside a
function (a function-local import is still a dependency, only a later one), and so do
relative imports. The nodes are the top-level parts of the package: its subpackages
(``core``, ``data``, ``train``, ...), its top-level modules (``cli``, ``config``,
``argtypes``, ...) and the package root ``mwnet`` itself (``from mwnet import
__version__``). The rules:

- ``core``, ``data`` and ``models`` import nothing of mwnet but themselves;
- ``label_issues`` (which reads run directories) and ``run`` (the run directory) do not
  import ``train``;
- the parts import each other without cycles, except for the arrows back up listed in
  :data:`KNOWN_BACK_EDGES`, each with the reason it is there.

The checker is tested on small fake graphs and a fake source tree below, so that a
planted violation is seen to fail.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import mwnet

SRC = Path(mwnet.__file__).parent
ROOT = "mwnet"

ONLY_THEMSELVES = ("core", "data", "models")
"""Parts that may import nothing of mwnet outside themselves."""

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "label_issues": ("train",),
    "run": ("train", "label_issues"),
}
"""``{part: parts it must not import}``, beyond what the cycle check already implies."""

KNOWN_BACK_EDGES: dict[tuple[str, str], str] = {
    ("train", "suite"): "mwnet compare ranks its methods with the suite's selection rule "
    "(train/compare.py imports suite/selection.py), while the suite trains its cells "
    "through train/; moving the selection rule out of suite/ would end the cycle, but "
    "suite/ is generated-report code kept as it is",
}
"""Import arrows that close a cycle, allowed one by one: ``(importer, imported): why``."""

Graph = Mapping[str, Mapping[str, list[str]]]
"""``{part: {imported part: ["file:line", ...]}}``."""


def _part(module: str, parts: set[str]) -> str | None:
    """The part of mwnet that ``module`` (a dotted name) belongs to; None outside mwnet."""
    names = module.split(".")
    if names[0] != ROOT:
        return None
    if len(names) == 1 or names[1] not in parts:
        return ROOT  # the package root, or a name defined in it (__version__)
    return names[1]


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement in ``module`` brings in."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: resolved against the importing module's package
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = package[: len(package) - (node.level - 1)]
        stem = ".".join([*base, *([node.module] if node.module else [])])
    else:
        stem = node.module or ""
    # ``from mwnet import data`` imports the part ``data``, ``from mwnet import
    # __version__`` a name of the package root: each imported name says which
    return [stem if alias.name == "*" else f"{stem}.{alias.name}" for alias in node.names]


def parts_of(src: Path) -> set[str]:
    """The top-level parts of the package at ``src``: subpackages and modules."""
    parts = {p.name for p in src.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    parts |= {p.stem for p in src.glob("*.py") if p.stem != "__init__"}
    return parts


def import_graph(src: Path) -> dict[str, dict[str, list[str]]]:
    """Which part of the package at ``src`` imports which other part, and where."""
    parts = parts_of(src)
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src).with_suffix("")
        is_package = rel.name == "__init__"
        dotted = [ROOT, *(rel.parts[:-1] if is_package else rel.parts)]
        module = ".".join(dotted)
        importer = _part(module, parts)
        assert importer is not None
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets = {_part(n, parts) for n in _imported(node, module, is_package)}
            for target in targets - {None, importer}:
                where = f"{path.relative_to(src.parent)}:{node.lineno}"
                graph.setdefault(importer, {}).setdefault(target, []).append(where)  # type: ignore[arg-type]
    return graph


def forbidden_imports(
    graph: Graph, only_themselves: Iterable[str], forbidden: Mapping[str, Iterable[str]]
) -> list[str]:
    """Every import that breaks :data:`ONLY_THEMSELVES` or :data:`FORBIDDEN`, with where."""
    found = []
    for part in only_themselves:
        for target, where in sorted(graph.get(part, {}).items()):
            found.append(f"{part} imports {target} ({', '.join(where)})")
    for part, targets in forbidden.items():
        for target in targets:
            where = graph.get(part, {}).get(target)
            if where:
                found.append(f"{part} imports {target} ({', '.join(where)})")
    return found


def cycles(graph: Graph, allowed: Iterable[tuple[str, str]] = ()) -> list[list[str]]:
    """The import cycles of ``graph`` once the ``allowed`` arrows are left out: each a
    strongly connected component of two parts or more (Tarjan's algorithm), sorted."""
    skip = set(allowed)
    nodes = sorted(set(graph) | {t for targets in graph.values() for t in targets})
    edges = {n: sorted(t for t in graph.get(n, {}) if (n, t) not in skip) for n in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in nodes:
        if node not in index:
            visit(node)
    return sorted(components)


def _describe(graph: Graph, component: list[str]) -> str:
    arrows = [
        f"{a} -> {b} ({graph[a][b][0]})"
        for a in component
        for b in component
        if b in graph.get(a, {})
    ]
    return "; ".join(arrows)


# --- the package ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, list[str]]]:
    return import_graph(SRC)


def test_the_lowest_layers_and_the_run_readers_import_nothing_above_them(graph):
    assert forbidden_imports(graph, ONLY_THEMSELVES, FORBIDDEN) == []


def test_no_import_cycle_between_the_parts_but_the_known_ones(graph):
    found = cycles(graph, KNOWN_BACK_EDGES)
    assert found == [], "import cycles: " + " | ".join(_describe(graph, c) for c in found)


def test_each_known_back_edge_still_exists_and_closes_a_cycle(graph):
    """An exception that no longer applies is removed from the list, not kept."""
    for importer, imported in KNOWN_BACK_EDGES:
        assert imported in graph.get(importer, {}), f"{importer} no longer imports {imported}"
        others = {k: v for k, v in KNOWN_BACK_EDGES.items() if k != (importer, imported)}
        assert cycles(graph, others), f"{importer} -> {imported} closes no cycle any more"


def test_the_scan_sees_the_imports_it_must(graph):
    """The scanner reads what it claims to: a function-local import (train/compare.py
    imports label_issues inside a function) and ``from mwnet import <part>``
    (experiment.py: ``from mwnet import models``)."""
    compare = (SRC / "train" / "compare.py").read_text()
    assert "    from mwnet.label_issues" in compare  # local, indented
    assert any(w.startswith("mwnet/train/compare.py:") for w in graph["train"]["label_issues"])
    assert any(w.startswith("mwnet/train/experiment.py:") for w in graph["train"]["models"])
    assert "core" not in graph and "data" not in graph and "models" not in graph


# --- the checker, on planted violations ----------------------------------------------


def test_cycles_finds_a_planted_cycle_and_only_it():
    fake = {"a": {"b": ["x"]}, "b": {"c": ["x"]}, "c": {"a": ["x"]}, "d": {"a": ["x"]}}
    assert cycles(fake) == [["a", "b", "c"]]
    assert cycles(fake, [("c", "a")]) == []  # the one arrow back, allowed
    assert cycles(fake, [("d", "a")]) == [["a", "b", "c"]]  # an arrow not on the cycle
    two = {"a": {"b": ["x"]}, "b": {"a": ["x"]}, "c": {"d": ["x"]}, "d": {"c": ["x"]}}
    assert cycles(two) == [["a", "b"], ["c", "d"]]
    assert cycles({"a": {"b": ["x"]}, "b": {}}) == []


def test_forbidden_imports_finds_planted_ones():
    fake = {"data": {"train": ["data/x.py:3"]}, "label_issues": {"train": ["li.py:9"]}}
    assert forbidden_imports(fake, ["data"], {"label_issues": ["train"]}) == [
        "data imports train (data/x.py:3)",
        "label_issues imports train (li.py:9)",
    ]
    assert forbidden_imports(fake, ["core"], {"label_issues": ["suite"]}) == []


def test_a_planted_tree_is_read_with_local_relative_and_package_imports(tmp_path):
    """A fake ``mwnet`` source tree with a function-local import closing a cycle, a
    relative import, ``from mwnet import <part>`` and a name of the package root."""
    src = tmp_path / "mwnet"
    for package in ("core", "data", "train", "label_issues"):
        (src / package).mkdir(parents=True)
        (src / package / "__init__.py").write_text("")
    (src / "__init__.py").write_text("__version__ = '0'\n")
    (src / "cli.py").write_text("from mwnet import __version__\nfrom mwnet import train\n")
    (src / "core" / "a.py").write_text("import torch\nfrom . import b\n")
    (src / "core" / "b.py").write_text("")
    (src / "data" / "prep.py").write_text("def f():\n    from ..train import loop\n")
    (src / "train" / "loop.py").write_text("from mwnet.data.prep import f\nimport mwnet.core.a\n")
    (src / "label_issues" / "report.py").write_text("from mwnet import core\n")
    graph = import_graph(src)
    assert {k: sorted(v) for k, v in graph.items()} == {
        "cli": ["mwnet", "train"],
        "data": ["train"],
        "train": ["core", "data"],
        "label_issues": ["core"],
    }
    assert graph["data"]["train"] == ["mwnet/data/prep.py:2"]
    assert forbidden_imports(graph, ["core", "data"], {}) == [
        "data imports train (mwnet/data/prep.py:2)"
    ]
    assert cycles(graph) == [["data", "train"]]  # closed by the function-local import
