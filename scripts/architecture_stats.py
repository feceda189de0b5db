"""Measure the suite's large-scale shape: files per folder, the longest and most branched
functions, the import graph's cycles and the README's length.

    python scripts/architecture_stats.py [--root DIR] [--top 5]

Function length counts the lines from ``def`` to the function's last line; branches are
1 + if/for/while/except/with-comprehension/boolean operators (roughly McCabe). Imports include
function-level ones, relative imports resolved. Reads source only: nothing is imported or run.
tests/test_architecture.py checks the import rules and cycles with this module's graph code.
"""

from __future__ import annotations

import argparse
import ast
import statistics
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("strategies", "benchmark", "reports", "scripts")
SUITE = ("strategies", "benchmark", "reports")
BRANCHES = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.ExceptHandler, ast.comprehension,
            ast.IfExp, ast.Match)


def sources(root: Path, packages: tuple[str, ...]) -> list[Path]:
    return sorted(p for pkg in packages for p in (root / pkg).rglob("*.py")
                  if "__pycache__" not in p.parts)


def branches(node: ast.AST) -> int:
    count = 1
    for child in ast.walk(node):
        if isinstance(child, BRANCHES):
            count += 1
        elif isinstance(child, ast.BoolOp):
            count += len(child.values) - 1
    return count


def functions(root: Path) -> list[tuple[str, int, int]]:
    """(path:line name, lines, branches) of every function in the suite and its scripts."""
    found = []
    for path in sources(root, PACKAGES):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                where = f"{path.relative_to(root)}:{node.lineno} {node.name}"
                found.append((where, node.end_lineno - node.lineno + 1, branches(node)))
    return found


@dataclass(frozen=True)
class Import:
    """One import statement of a suite module: what it names, resolved to a dotted name."""

    module: str  #: the importing module
    line: int
    target: str  #: the imported module (or ``module.attribute`` for ``from module import x``)


def module_files(root: Path, packages: tuple[str, ...] = SUITE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``packages``."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
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


def all_imports(modules: dict[str, Path]) -> tuple[Import, ...]:
    """Every import of every module of ``modules`` (:func:`module_files`)."""
    return tuple(imp for name, path in modules.items() for imp in imports_of(name, path))


def import_graph(
    modules: dict[str, Path], imports: Iterable[Import] | None = None
) -> dict[str, set[str]]:
    """Module -> the modules of ``modules`` it imports (itself excluded); ``imports``: those of
    :func:`all_imports`, read here when not given."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for imp in all_imports(modules) if imports is None else imports:
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


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module."""
    return [c for c in strongly_connected(graph) if len(c) > 1]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    root = args.root.resolve()

    print("## Files per folder (python files: count, median / max lines)")
    folders: dict[Path, list[int]] = defaultdict(list)
    for path in sources(root, PACKAGES):
        folders[path.parent.relative_to(root)].append(len(path.read_text().splitlines()))
    for folder, sizes in sorted(folders.items()):
        print(f"  {folder}/: {len(sizes)} ({statistics.median(sizes):.0f} / {max(sizes)})")

    found = functions(root)
    print(f"\n## Functions: {len(found)}; over 50 lines: {sum(n > 50 for _, n, _ in found)};"
          f" over 100: {sum(n > 100 for _, n, _ in found)}")
    print("  longest:")
    for where, n, b in sorted(found, key=lambda f: -f[1])[: args.top]:
        print(f"    {n:4d} lines {b:3d} br.  {where}")
    print("  most branched:")
    for where, n, b in sorted(found, key=lambda f: -f[2])[: args.top]:
        print(f"    {b:4d} br. {n:4d} lines  {where}")

    graph = import_graph(module_files(root))
    loops = cycles(graph)
    print(f"\n## Import cycles among {len(graph)} suite modules: {len(loops)}")
    for loop in loops:
        print("  " + " <-> ".join(loop))

    readme = root / "README.md"
    if readme.exists():
        print(f"\n## README.md: {len(readme.read_text().splitlines())} lines")


if __name__ == "__main__":
    main()
