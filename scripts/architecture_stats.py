"""Measure the suite's large-scale shape: files per folder, the longest and most branched
functions, the import graph's cycles and the README's length.

    python scripts/architecture_stats.py [--root DIR] [--top 5]

Function length counts the lines from ``def`` to the function's last line; branches are
1 + if/for/while/except/with-comprehension/boolean operators (roughly McCabe). Imports include
function-level ones, relative imports resolved. Reads source only: nothing is imported or run.
"""

from __future__ import annotations

import argparse
import ast
import statistics
from collections import defaultdict
from pathlib import Path

PACKAGES = ("strategies", "benchmark", "reports", "scripts")
SUITE = ("strategies", "benchmark", "reports")
BRANCHES = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.ExceptHandler, ast.comprehension,
            ast.IfExp, ast.Match)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


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


def imports(root: Path) -> dict[str, set[str]]:
    """Module -> suite modules it imports (any depth, relative imports resolved)."""
    modules = {module_name(p, root): p for p in sources(root, SUITE)}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from X import a`: the submodule X.a where there is one, else X itself
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
        graph.setdefault(name, set())
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


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

    graph = imports(root)
    loops = cycles(graph)
    print(f"\n## Import cycles among {len(graph)} suite modules: {len(loops)}")
    for loop in loops:
        print("  " + " <-> ".join(loop))

    readme = root / "README.md"
    if readme.exists():
        print(f"\n## README.md: {len(readme.read_text().splitlines())} lines")


if __name__ == "__main__":
    main()
