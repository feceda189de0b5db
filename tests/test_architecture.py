"""The import rules between the suite's packages, read statically from the source (every
``import`` statement, function-level ones included, relative imports resolved):
``strategies`` imports neither ``benchmark`` nor ``reports``; ``reports`` imports neither torch
nor ``strategies`` nor ``benchmark``; no import cycle among the suite's modules; and no test
module imports another (shared helpers are in ``tests/support/``)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from tests.support import ROOT, load_script

#: the import graph's code, shared with the script that reports the suite's shape
arch = load_script("architecture_stats")
imports_of, resolve = arch.imports_of, arch.resolve
strongly_connected, a_cycle = arch.strongly_connected, arch.a_cycle

PACKAGES = ("strategies", "benchmark", "reports")


@cache
def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the suite's packages."""
    return arch.module_files(ROOT, PACKAGES)


@cache
def all_imports() -> tuple[arch.Import, ...]:
    return arch.all_imports(module_files())


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
    return arch.import_graph(module_files(), all_imports())


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
