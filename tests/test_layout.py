"""The house's layout rules, read from the source: no import inside a function (except optional dependencies,
by an allow-list), no import circle between dmpose's modules, and nothing below dmpose/cli importing rich or
typer."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "dmpose"

# Imported inside functions on purpose: optional dependencies (absent on many machines) and what imports them.
OPTIONAL = {
    "triton": "Linux + GPU only; the kernels import it at module level",
    "dmpose.kernels.sinkhorn": "imports triton (@triton.jit at import)",
    "dmpose.kernels.decode": "imports triton (@triton.jit at import)",
    "onnxscript": "the onnx extra",
    "onnx": "the onnx extra",
    "onnxruntime": "the onnx extra",
    "matplotlib.pyplot": "chooses a backend on import: only after matplotlib.use('Agg')",
    "torchvision": "an optional extra",
    "tensorboard": "an optional extra",
    "torch.utils.tensorboard": "needs the tensorboard extra",
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            return [".".join([*base, *([node.module] if node.module else [])])]
        return [node.module or ""]
    return []


def _sources():
    for path in sorted(ROOT.rglob("*.py")):
        yield path, _module(path), ast.parse(path.read_text(), str(path))


def _allowed(name: str) -> bool:
    return any(name == o or name.startswith(o + ".") for o in OPTIONAL)


def test_no_import_inside_a_function_except_optional_dependencies():
    found = []
    for path, module, tree in _sources():
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    for name in _imported(node, module, path.name == "__init__.py"):
                        if not _allowed(name):
                            found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} {fn.name}: {name}")
    assert not found, "imports inside functions (move them to the module top):\n" + "\n".join(found)


def _graph() -> dict[str, set[str]]:
    modules = {module: (path, tree) for path, module, tree in _sources()}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, (path, tree) in modules.items():
        for node in tree.body:  # module level only (functions hold only the optional imports)
            stmts = [node]
            if isinstance(node, (ast.If, ast.Try, ast.With)):
                stmts = list(ast.walk(node))
            for stmt in stmts:
                for name in _imported(stmt, module, path.name == "__init__.py"):
                    if isinstance(stmt, ast.ImportFrom) and stmt.module is not None:
                        # `from pkg import sub` names a submodule when there is one
                        subs = [f"{name}.{a.name}" for a in stmt.names if f"{name}.{a.name}" in modules]
                        graph[module].update(subs or ([name] if name in modules else []))
                    elif name in modules:
                        graph[module].add(name)
    return graph


def test_no_import_circle_between_dmpose_modules():
    graph = _graph()
    state: dict[str, int] = {}
    circles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if n.startswith(m + ".") or m.startswith(n + "."):
                continue  # a package and its own submodules (the package re-exports them)
            if state.get(n) == 1:
                circles.append(" -> ".join([*stack[stack.index(n):], n]))
            elif n not in state:
                visit(n, [*stack, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_nothing_below_cli_imports_rich_or_typer():
    found = []
    for path, module, tree in _sources():
        if module.startswith("dmpose.cli"):
            continue
        for node in ast.walk(tree):
            for name in _imported(node, module, path.name == "__init__.py"):
                if name.split(".")[0] in ("rich", "typer"):
                    found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {name}")
    assert not found, found
