"""The layers hold: every module's imports (at the top and inside functions) read from its source, checked
against the arrows of docs/development.md, and no import cycle anywhere; every public function and class is
documented and typed."""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)

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


def missing_hints(function: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> list[str]:
    """What a signature leaves unannotated: arguments, ``*args`` and ``**kwargs`` (a method's ``self``/``cls``
    aside) and the return (``__init__`` returns None without saying so)."""
    args = function.args.posonlyargs + function.args.args
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in function.decorator_list)
    if method and not static:
        args = args[1:]
    starred = [a for a in (function.args.vararg, function.args.kwarg) if a is not None]
    missing = [a.arg for a in args + function.args.kwonlyargs + starred if a.annotation is None]
    if function.returns is None and function.name != "__init__":
        missing.append("return")
    return missing


def undocumented_or_untyped(path: Path) -> list[str]:
    """``path:line name: what`` for each public module-level function or public class (at any depth in public
    classes) without a docstring, and each such function or method (dunders included) without full type hints."""
    where = path.relative_to(SOURCE)
    found = []

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                if not ast.get_docstring(node):
                    found.append(f"{where}:{node.lineno} class {prefix}{node.name}: no docstring")
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, FUNCTIONS):
                method, dunder = bool(prefix), node.name.startswith("__") and node.name.endswith("__")
                if node.name.startswith("_") and not (method and dunder):
                    continue
                if not method and not ast.get_docstring(node):
                    found.append(f"{where}:{node.lineno} {node.name}: no docstring")
                missing = missing_hints(node, method)
                if missing:
                    found.append(f"{where}:{node.lineno} {prefix}{node.name}: no hint for {', '.join(missing)}")

    visit(ast.parse(path.read_text()).body, "")
    return found


def test_every_public_function_and_class_has_hints_and_a_docstring():
    offenders = [line for path in sorted(SOURCE.joinpath("cspt").rglob("*.py"))
                 for line in undocumented_or_untyped(path)]
    assert not offenders, "\n".join([f"{len(offenders)} without a docstring or type hints:", *offenders])
