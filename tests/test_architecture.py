"""The import rules between the suite's packages, read statically from the source (every
``import`` statement, function-level ones included, relative imports resolved):
``strategies`` imports neither ``benchmark`` nor ``reports``; ``reports`` imports neither torch
nor ``strategies`` nor ``benchmark``; no import cycle among the suite's modules; and no test
module imports another (shared helpers are in ``tests/support/``)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from tests.support import ROOT

PACKAGES = ("strategies", "benchmark", "reports")


@dataclass(frozen=True)
class Import:
    """One import statement of a suite module: what it names, resolved to a dotted name."""

    module: str  #: the importing module
    line: int
    target: str  #: the imported module (or ``module.attribute`` for ``from module import x``)


@cache
def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the suite's packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path) -> Iterator[Import]:
    """Every import in the file, at any depth; ``from x import y`` yields ``x.y`` (a submodule
    or an attribute: :func:`resolve` decides)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                yield Import(name, node.lineno, f"{source}.{alias.name}")


def resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The suite module an import loads: the longest prefix of ``target`` that is a module
    (``from pkg import name`` loads ``pkg.name`` when it is a submodule, else ``pkg``)."""
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in modules:
            return prefix
    return None


@cache
def all_imports() -> tuple[Import, ...]:
    return tuple(imp for name, path in module_files().items() for imp in imports_of(name, path))


def top(name: str) -> str:
    return name.split(".")[0]


def violations(importer: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for imp in all_imports():
        if top(imp.module) == importer and top(imp.target) in forbidden:
            found.append(f"{module_files()[imp.module].relative_to(ROOT)}:{imp.line} "
                         f"imports {imp.target}")
    return found


def test_the_suite_has_modules_to_check():
    modules = module_files()
    for package in PACKAGES:
        assert package in modules, package
    assert len(modules) > 30


def test_strategies_import_neither_benchmark_nor_reports():
    found = violations("strategies", ("benchmark", "reports"))
    assert not found, "strategies must not depend on benchmark or reports:\n" + "\n".join(found)


def test_reports_import_neither_torch_nor_strategies_nor_benchmark():
    found = violations("reports", ("torch", "strategies", "benchmark"))
    assert not found, ("reports must not depend on torch, strategies or benchmark:\n"
                       + "\n".join(found))


def test_no_test_module_imports_another():
    """Shared helpers live in tests/support/; renaming a test file must break nothing."""
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for imp in imports_of(name, path):
            if any(part.startswith("test_") for part in imp.target.split(".")):
                found.append(f"{path.relative_to(ROOT)}:{imp.line} imports {imp.target}")
    assert not found, "test modules importing test modules:\n" + "\n".join(found)


# ----------------------------------------------------------------------------- cycles


def import_graph() -> dict[str, set[str]]:
    """Suite module -> the suite modules it imports (itself excluded)."""
    modules = module_files()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for imp in all_imports():
        target = resolve(imp.target, modules)
        if target is not None and target != imp.module:
            graph[imp.module].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                out.append(sorted(component))
    return out


def a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete cycle through the component's first module (shortest, by BFS)."""
    start, members = component[0], set(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle in {component}")


def test_no_import_cycle_among_the_suite_modules():
    graph = import_graph()
    cycles = [" -> ".join(a_cycle(graph, c)) for c in strongly_connected(graph) if len(c) > 1]
    assert not cycles, "import cycles among the suite's modules:\n" + "\n".join(cycles)


# ----------------------------------------------------------------- the checker itself


@pytest.mark.parametrize("graph,cycles", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"a"}}, [["a", "b", "a"]]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c", "a"]]),
    ({"a": {"b", "c"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [["a", "b", "a"], ["c", "d", "c"]]),
])
def test_cycles_are_found_and_named(graph, cycles):
    found = [a_cycle(graph, c) for c in strongly_connected(graph) if len(c) > 1]
    assert sorted(found) == cycles


def test_relative_and_function_level_imports_are_resolved(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("from . import sibling\nfrom ..other import thing\n"
                    "def f():\n    import torch.nn\n    from .sub.deep import x\n")
    got = [(i.line, i.target) for i in imports_of("pkg.inner.mod", path)]
    assert sorted(got) == [(1, "pkg.inner.sibling"), (2, "pkg.other.thing"), (4, "torch.nn"),
                           (5, "pkg.inner.sub.deep.x")]
    modules = {"pkg.inner.sub.deep": path, "pkg.other": path}
    assert resolve("pkg.inner.sub.deep.x", modules) == "pkg.inner.sub.deep"
    assert resolve("pkg.other.thing", modules) == "pkg.other"
    assert resolve("torch.nn", modules) is None
