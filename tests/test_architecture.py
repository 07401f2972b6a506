"""The package's shape: no import cycles, and the checkpoint and leakage code never reach into training."""

from __future__ import annotations

import ast
from pathlib import Path

import piperctl

PACKAGE = Path(piperctl.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_graph() -> dict[str, set[str]]:
    """piperctl module -> the piperctl modules it imports (at module level or inside functions)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1] + [base]
                    ).strip(".")
                # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                # Every module imports the root package first anyway; only edges between modules count.
                if target in modules and target not in (name, "piperctl"):
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_real_imports() -> None:
    graph = _import_graph()
    assert "piperctl.checkpoints.manager" in graph["piperctl.training.trainer"]
    assert "piperctl.checkpoints.format" in graph["piperctl.checkpoints.integrity"]


def test_no_import_cycles() -> None:
    assert _cycles(_import_graph()) == []


def test_checkpoints_and_leakage_do_not_import_training() -> None:
    graph = _import_graph()
    wrong = sorted(
        (src, dst)
        for src, targets in graph.items()
        if src.startswith(("piperctl.checkpoints", "piperctl.leakage"))
        for dst in targets
        if dst.startswith("piperctl.training")
    )
    assert wrong == []


def test_the_trainer_is_imported_only_by_the_training_api() -> None:
    graph = _import_graph()
    importers = sorted(src for src, targets in graph.items() if "piperctl.training.trainer" in targets)
    assert importers == ["piperctl.training", "piperctl.training.api"]
