"""The layout keeps its promises: imports point down the layers (`LAYERS`), no import cycles, artifacts are
data that never reach up into the engine, no method family imports another, and the shared engine never asks
which method or prompt flag it is running. Imports inside functions count as much as those at the top."""

from __future__ import annotations

import ast
import re
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


def _nodes(tree: ast.AST):
    """Every node of `tree` (as `ast.walk`) except those under `if TYPE_CHECKING:`."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _imports(path: Path) -> set[str]:
    """Every promptlift module `path` imports, at module level or inside a function (a lazy import still
    points somewhere: an upward one is as much a layering error as one at the top). Imports under
    `if TYPE_CHECKING:` are left out: they never run."""
    mod = _module(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in _nodes(ast.parse(path.read_text())):
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
    return {m: {t for t in _imports(p) if t in files and t != m} for m, p in files.items()}


# The layers, bottom first: a module imports only modules of its own layer or a lower one.
LAYERS = [
    ["_version", "errors", "files", "kv", "reporter"],              # primitives: no promptlift imports
    ["datafiles", "metrics", "task", "render", "template", "runs", "checkpoints", "models"],
    ["artifacts"],                                                   # artifacts are data
    ["lm"],                                                          # models: calls, decoding, scoring, cache
    ["engine"],                                                      # apply, evaluate, train, search
    ["methods", "registry", "selector"],                             # the methods, registered by name; the selector's training
    ["api", "cli", "demo", "report", "peft_io", "serve", ""],        # the surfaces ("" = the package root)
]


def _layer(module: str) -> int:
    """The index in LAYERS of a module, by its first name under promptlift (the root: "")."""
    first = module.split(".")[1] if "." in module else ""
    found = [i for i, names in enumerate(LAYERS) if first in names]
    assert found, f"{module} is in no layer of tests/test_architecture.py: add it to LAYERS"
    return found[0]


def test_imports_point_down_the_layers():
    bad = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
           for m, targets in sorted(_graph().items()) for t in sorted(targets) if _layer(t) > _layer(m)]
    assert not bad, "upward imports:\n" + "\n".join(bad)


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
    shared = ["engine/evaluate.py", "engine/backends.py", "engine/train.py", "lm/scoring.py", "lm/decode.py",
              "engine/select.py", *(str(p.relative_to(SRC)) for p in sorted((SRC / "engine").glob("search*.py"))),
              *(f"engine/search/{p.name}" for p in sorted((SRC / "engine" / "search").glob("*.py")))]
    assert len(shared) >= 7
    for fname in shared:
        tree = ast.parse((SRC / fname).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in names, f"{fname} names method {node.value!r}"
            if isinstance(node, ast.Attribute):
                assert node.attr not in flags and node.attr != "method", f"{fname} reads .{node.attr}"
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance":
                assert "Prompt" not in ast.unparse(node.args[1]), f"{fname}: {ast.unparse(node)}"


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


def test_tests_share_fakes_not_each_other():
    """tests/ mirrors the package; what tests share lives in tests/fakes.py (fixtures in conftest.py), so no test
    module imports another test module or conftest."""
    tests = Path(__file__).resolve().parent
    bad = [f"{p.relative_to(tests)}: {line.strip()}" for p in tests.rglob("*.py")
           for line in p.read_text().splitlines()
           if re.match(r"\s*(from (test_\w+|conftest) import|import (test_\w+|conftest)\b)", line)]
    assert not bad, "\n".join(bad)
