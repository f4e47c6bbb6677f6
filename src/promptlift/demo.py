"""`make demo`: the headline on the bundled model and the project's own demo task."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

# (method, options) in the order shown. The default is a few minutes on a laptop CPU and still shows a gain with
# its paired interval; `promptlift demo --full` runs the longer version (README "What to expect" has both times).
DEMO_METHODS: list[tuple[str, dict]] = [
    ("zero-shot", {}),
    ("few-shot", {"shots": 4}),
    ("prompt-tuning", {"tokens": 20, "epochs": 3}),
]
FULL_DEMO_METHODS: list[tuple[str, dict]] = [
    ("zero-shot", {}),
    ("few-shot", {"shots": 4}),
    ("calibrated", {}),
    ("few-shot", {"shots": 4, "calibrate": True}),
    ("prompt-tuning", {"tokens": 20, "epochs": 10}),
]


def command_name() -> str:
    """How to run `promptlift` from the user's shell, for hints printed as commands: `promptlift` when that
    is the one on PATH, else the script beside this Python (e.g. `.venv/bin/promptlift` before the venv is
    activated), else `python -m promptlift.cli`."""
    here = Path(sys.executable).parent / "promptlift"
    found = shutil.which("promptlift")
    if found and (not here.exists() or Path(found).resolve() == here.resolve()):
        return "promptlift"
    if here.exists():
        try:
            return str(here.relative_to(Path.cwd()))
        except ValueError:
            return str(here)
    return f"{sys.executable} -m promptlift.cli"


def run_demo(out: Path, as_json: bool = False, methods: list[tuple[str, dict]] | None = None,
             full: bool = False) -> list[dict]:
    """Optimize with each demo method (`methods`, else DEMO_METHODS, or FULL_DEMO_METHODS with `full`) on
    demo_topics; print dev/test accuracy and the paired gain over zero-shot side by side."""
    from .api import optimize
    from .lm.hf import HFModel
    from .task import Task

    console = Console(stderr=as_json)
    task = Task.demo("demo_topics")
    console.print(f"[bold]promptlift demo[/] — task {task.name} ({len(task.labels)} labels, "
                  f"label words: {', '.join(task.labels.values())}); model smollm2-135m")
    lm = HFModel("smollm2-135m")
    rows = []
    for method, opts in methods or (FULL_DEMO_METHODS if full else DEMO_METHODS):
        name = method + "".join(f" {k}={v}" for k, v in opts.items())
        console.print(f"→ {name}")
        run_dir = out / name.replace(" ", "_").replace("=", "")
        run = optimize(method, lm, task, out=run_dir, overwrite=True, progress=not as_json, **opts)
        rows.append({"method": name, "dev": run.dev.accuracy, "test": run.test.accuracy,
                     "ci95": run.test.ci95, "gain": run.gain, "seconds": round(run.seconds, 1), "dir": str(run_dir)})
    table = Table(title=f"demo_topics test accuracy (n={len(task.test)}), smollm2-135m")
    for col in ("method", "dev", "test", "95% CI", "gain over zero-shot [paired 95% CI]", "seconds"):
        table.add_column(col)
    for r in rows:
        g = r["gain"]
        gain = (f"{g['gain']:+.3f} [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}]"
                + ("" if g["significant"] else " not significant") if g else "")
        table.add_row(r["method"], f"{r['dev']:.3f}", f"{r['test']:.3f}",
                      f"{r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}", gain, str(r["seconds"]))
    console.print(table)
    if methods is None and not full:
        console.print(f"The longer demo (calibration, 10 epochs of prompt tuning): `{command_name()} demo --full`")
    console.print(f"Artifacts and run directories: {out}/*/prompt.json; compare them with "
                  f"`{command_name()} report {out}/* --out report.html`", soft_wrap=True)
    if as_json:
        print(json.dumps(rows, indent=2))
    return rows
