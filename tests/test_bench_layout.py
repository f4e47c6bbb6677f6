"""bench/ is a small library plus one script per comparison: no script imports another, README lists them all."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
LIBRARY = {"common.py", "loadgen.py"}  # what the scripts share
SCRIPTS = sorted(p for p in [*BENCH.glob("*.py"), *BENCH.glob("investigations/*.py")] if p.name not in LIBRARY)


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_bench_script_imports_another():
    stems = {p.stem for p in SCRIPTS}
    bad = {str(p.relative_to(REPO)): sorted(imported_modules(p) & stems) for p in SCRIPTS}
    assert SCRIPTS and not {k: v for k, v in bad.items() if v}


def test_readme_lists_every_bench_script():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in SCRIPTS if p.parent == BENCH and p.name not in readme]
    assert not missing, f"README's layout does not name: {missing}"
    assert "investigations/" in readme
