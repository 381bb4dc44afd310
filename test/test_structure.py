"""The package layout: no import cycles, and no library module importing command-line code."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "evit_ros"
CORE_STAGES = ("network", "deploy", "runtime", "pipeline", "io", "evaluation")


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> tuple[dict[str, set[str]], set[str]]:
    """Static imports between the package's modules (imports inside functions too), and the modules that parse
    arguments (import argparse)."""
    files = {_module(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in files}
    cli: set[str] = set()
    for mod, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                stem = ".".join(base[: len(base) - node.level + 1] + [node.module or ""]) if node.level else node.module
                names = [stem, *(f"{stem}.{a.name}" for a in node.names)]
            else:
                continue
            if "argparse" in names:
                cli.add(mod)
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != mod and not mod.startswith(name + "."):
                    edges[mod].add(name)
    return edges, cli


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    edges, _ = _import_graph()
    assert _cycles(edges) == []


def test_library_never_imports_command_line_code() -> None:
    edges, cli = _import_graph()
    leaks = sorted((m, t) for m, targets in edges.items() if m not in cli for t in targets if t in cli)
    assert leaks == []
    assert all(m.startswith("evit_ros.cli.") for m in cli), sorted(cli)


def test_core_never_imports_rclpy() -> None:
    for stage in CORE_STAGES:
        for path in (PACKAGE / stage).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                assert not any(n.split(".")[0] == "rclpy" for n in names), path


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
