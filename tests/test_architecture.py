"""The layout keeps its promises: no import cycles, artifacts are data that never reach up into the
engine, and the shared engine never asks which method or prompt flag it is running."""

from __future__ import annotations

import ast
from pathlib import Path

import promptlift
from promptlift.registry import list_methods

SRC = Path(promptlift.__file__).parent


def _module(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _top_level_imports(path: Path) -> set[str]:
    """Modules imported at module level (imports inside functions are lazy and cannot cycle at import time)."""
    mod = _module(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            for a in node.names:  # `from . import soft` imports the submodule
                out.add(f"{target}.{a.name}")
    return {m for m in out if m.startswith("promptlift")}


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in SRC.rglob("*.py")}
    return {m: {t for t in _top_level_imports(p) if t in files and t != m} for m, p in files.items()}


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_artifacts_never_import_the_engine_or_models():
    for path in (SRC / "artifacts").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):  # lazy imports count too
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("engine", "lm", "template", "methods")), (path, node.module)
                assert "promptlift.engine" not in node.module and "promptlift.lm" not in node.module, path


def test_shared_engine_never_asks_which_method_or_flag():
    names = set(list_methods())
    flags = {"knn", "calibrate", "reasoning"}
    shared = ["evaluate.py", "backends.py", "train.py", "scoring.py", "decode.py", "search.py", "select.py"]
    for fname in shared:
        tree = ast.parse((SRC / "engine" / fname).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in names, f"engine/{fname} names method {node.value!r}"
            if isinstance(node, ast.Attribute):
                assert node.attr not in flags and node.attr != "method", f"engine/{fname} reads .{node.attr}"
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance":
                assert "Prompt" not in ast.unparse(node.args[1]), f"engine/{fname}: {ast.unparse(node)}"


def test_no_family_imports_another():
    """A method family (methods/<family>/) imports only itself, methods/base.py and methods/shared.py."""
    families = {p.name for p in (SRC / "methods").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    for path in (SRC / "methods").rglob("*.py"):
        own = path.relative_to(SRC / "methods").parts[0]
        if own not in families:
            continue
        for node in ast.walk(ast.parse(path.read_text())):  # lazy imports count too
            if isinstance(node, ast.ImportFrom):
                target = node.module or ""
                if node.level == 2:  # `from ..x import` inside methods/<family>/
                    target = f"promptlift.methods.{target}"
                elif node.level == 1:
                    target = f"promptlift.methods.{own}.{target}"
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[:2] == ["promptlift", "methods"] and len(parts) > 2 and parts[2] in families:
                    assert parts[2] == own, f"methods/{path.relative_to(SRC / 'methods')} imports {name}"
