"""The layers hold: every module's imports (at the top and inside functions) read from its source, checked
against the arrows of docs/development.md, and no import cycle anywhere."""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"

#: layer -> the layers it must never import (lower layers import nothing above them)
FORBIDDEN = {
    "cspt.data": ("cspt.models", "cspt.weights", "cspt.engine", "cspt.tasks", "cspt.pipeline", "cspt.report",
                  "cspt.cli", "cspt.demo"),
    "cspt.models": ("cspt.data", "cspt.weights", "cspt.engine", "cspt.tasks", "cspt.pipeline", "cspt.report",
                    "cspt.cli", "cspt.demo"),
    "cspt.weights": ("cspt.engine", "cspt.tasks", "cspt.pipeline", "cspt.report", "cspt.cli", "cspt.demo"),
    "cspt.engine": ("cspt.tasks", "cspt.pipeline", "cspt.report", "cspt.cli", "cspt.demo"),
    "cspt.metrics": ("cspt.engine", "cspt.tasks", "cspt.pipeline", "cspt.report", "cspt.cli", "cspt.demo"),
    "cspt.tasks": ("cspt.pipeline", "cspt.report", "cspt.cli", "cspt.demo"),
    # the report reads run directories: it never builds or runs a model
    "cspt.report": ("cspt.tasks", "cspt.models", "cspt.weights", "cspt.pipeline", "cspt.cli", "cspt.demo"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The ``cspt`` modules a file imports, wherever in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("cspt")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cspt"):
            found.add(node.module)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): imports_of(p) for p in SOURCE.joinpath("cspt").rglob("*.py")}
    return {name: {target for target in targets if target in modules and target != name}
            for name, targets in modules.items()}


def test_no_layer_imports_one_above_it():
    wrong = [f"{module} imports {target}" for module, targets in graph().items()
             for layer, forbidden in FORBIDDEN.items() if module == layer or module.startswith(layer + ".")
             for target in targets if target.startswith(forbidden)]
    assert not wrong, wrong


def test_no_import_cycles():
    edges = graph()
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles
