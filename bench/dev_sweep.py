"""Choose a method's defaults on dev: fit it with each option set, score dev only, never test.

The brief's rule is that defaults are chosen on dev (or on training tasks) and test gives the final
number only. This script is the tool for that choice: for every option set in `--grid` and every
seed it fits `--method` on the task's training rows (the split of `bench/discrete.py`) and reports,
on the dev rows only, exact match / accuracy, the mean training objective of the kept prompt on dev
(`engine.evaluate.example_losses`: label cross-entropy, or minus the reference answer's
log-probability on a generation task), the fit's wall time and target calls, and for a CMA-ES
method (BBT, BBTv2) the best training fitness of the first and last generations. Test is never
loaded for scoring.

    .venv/bin/python bench/dev_sweep.py --task antonyms --method bbt \
        --grid "" "steps=50" "steps=40 dim=200 popsize=12" --seeds 0 --reuse --section dev_sweep_bbt_antonyms

An option set is a space-separated list of OPTION=VALUE ("" = the method's defaults). With `--reuse`,
a run whose directory already holds a prompt fitted with the same options is scored again on dev
instead of being fitted again. Results go to bench/DEV_SWEEPS.md (one section per `--section`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (command_line, discrete_task, loadavg, machine_facts, md_table, now, progress, timed,  # noqa: E402
                    write_section)

import promptlift  # noqa: E402
from promptlift.artifacts import load  # noqa: E402
from promptlift.engine.evaluate import example_losses  # noqa: E402
from promptlift.lm.hf import HFModel  # noqa: E402
from promptlift.registry import get_method, list_methods  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "DEV_SWEEPS.md"


def parse_grid(item: str) -> dict[str, str]:
    """"steps=50 dim=200" -> {"steps": "50", "dim": "200"} (values stay strings; the config types them)."""
    opts = {}
    for word in item.split():
        key, eq, value = word.partition("=")
        if not (key and eq):
            raise SystemExit(f"--grid: expected OPTION=VALUE words, got {word!r} in {item!r}")
        opts[key] = value
    return opts


def slug(opts: dict[str, str]) -> str:
    """A directory name for an option set ("defaults" for none)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "", "_".join(f"{k}-{v}" for k, v in sorted(opts.items()))) or "defaults"


def fitness_ends(run_dir: Path) -> tuple[float | None, float | None, int | None]:
    """Best training fitness of the first and last CMA-ES generations, and how many there were
    (None for a method that records no generations)."""
    f = run_dir / "checkpoint" / "search.json"
    gens = json.loads(f.read_text()).get("data", {}).get("fitness", []) if f.exists() else []
    if not gens:
        return None, None, None
    return min(gens[0]), min(gens[-1]), len(gens)


def saved_options(run_dir: Path) -> dict | None:
    f = run_dir / "config.json"
    return json.loads(f.read_text()).get("options") if f.exists() else None


def one(lm, task, method: str, opts: dict[str, str], seed: int, run_dir: Path, reuse: bool) -> dict:
    """Fit (or reuse) one run and score its prompt on dev: the row of the report."""
    wanted = json.loads(json.dumps(dataclasses.asdict(get_method(method)(**opts).config)))
    fit_s = None
    if reuse and (run_dir / "prompt.json").exists() and saved_options(run_dir) == wanted:
        progress(f"{method} {opts or 'defaults'} seed {seed}: reuse {run_dir}")
        prompt = load(run_dir / "prompt.json")
        hist = (run_dir / "history.jsonl").read_text().splitlines()
        fit_s = json.loads(hist[-1]).get("time") if hist else None
    else:
        progress(f"{method} {opts or 'defaults'} seed {seed}: fit (load {loadavg()})")
        with timed() as t:
            run = promptlift.optimize(method, lm, task, out=run_dir, overwrite=True, seed=seed, progress=False,
                                      eval_splits=(), **opts)
        prompt, fit_s = run.prompt, t.wall
    dev = promptlift.evaluate(lm, task, prompt, split="dev", progress=False)
    loss = float(example_losses(lm, task, prompt, task.dev).mean())
    first, last, gens = fitness_ends(run_dir)
    row = {"options": opts, "seed": seed, "dev": dev.accuracy, "dev_loss": loss,
           "fit_s": round(fit_s, 1) if fit_s is not None else None,
           "target_calls": prompt.meta.get("cost", {}).get("target_calls"), "demos": len(prompt.demos),
           "fitness_first": first, "fitness_last": last, "generations": gens}
    progress(f"  dev {100 * dev.accuracy:.1f} %, dev loss {loss:.3f}")
    return row


def trajectory(lm, task, run_dir: Path, every: int) -> list[list]:
    """Every `every`-th candidate the search loop scored: its origin, its training objective on all
    training rows, and on dev. Shows whether what the search lowers on train carries over to dev."""
    f = run_dir / "checkpoint" / "search.json"
    cands = json.loads(f.read_text()).get("candidates", []) if f.exists() else []
    picked = cands[::every] + ([cands[-1]] if cands and (len(cands) - 1) % every else [])
    out = []
    for c in picked:
        p = load(run_dir / "checkpoint" / c["saved"] / "prompt.json")
        out.append([run_dir.parent.name, c["origin"], len(p.demos),
                    f"{float(example_losses(lm, task, p, task.train).mean()):.3f}",
                    f"{float(example_losses(lm, task, p, task.dev).mean()):.3f}"])
    return out


def fmt(x, digits=3):
    return "–" if x is None else f"{x:.{digits}f}"


def report(method: str, task, rows: list[dict], args, facts: dict) -> str:
    head = [f"## Dev sweep: `{method}` on `{task.name}`, smollm2-135m ({now()})", "",
            f"Command: `{command_line()}`  ",
            f"Machine: {facts['cpu']}, {facts['usable_cpus']} usable CPUs, torch {facts['torch']} (1 thread); "
            f"load average at start {facts['loadavg_start']}, at end {loadavg()} (a shared machine).  ",
            f"Data: train {len(task.train)} / dev {len(task.dev)} rows (the split of bench/discrete.py). "
            "Dev only: test is never scored here.", ""]
    table = []
    for opts in dict.fromkeys(json.dumps(r["options"], sort_keys=True) for r in rows):
        rs = [r for r in rows if json.dumps(r["options"], sort_keys=True) == opts]
        devs = [100 * r["dev"] for r in rs]
        spread = f" ± {statistics.stdev(devs):.1f}" if len(devs) > 1 else ""
        for_mean = lambda k: statistics.mean(r[k] for r in rs) if all(r[k] is not None for r in rs) else None  # noqa: E731
        table.append([" ".join(f"{k}={v}" for k, v in json.loads(opts).items()) or "(defaults)",
                      "/".join(str(r["seed"]) for r in rs), f"{statistics.mean(devs):.1f}{spread}",
                      fmt(for_mean("dev_loss")), fmt(for_mean("fitness_first")), fmt(for_mean("fitness_last")),
                      fmt(for_mean("generations"), 0), fmt(for_mean("fit_s"), 0), fmt(for_mean("target_calls"), 0),
                      "/".join(str(r["demos"]) for r in rs)])
    body = md_table(["options", "seeds", "dev %", "dev loss", "fitness, first gen.", "fitness, last gen.",
                     "generations", "fit s", "target calls", "demos kept"], table)
    foot = ["", "dev loss: the mean training objective of the kept prompt on the dev rows (lower is better). "
            "fitness: the best training objective in a CMA-ES generation (on the method's training subset)."]
    if args.trajectory:
        foot += ["", f"Every {args.trajectory}th candidate of each run (and its last), scored again on all training "
                 "rows and on dev: does what the search lowers on train carry over to dev?", "",
                 md_table(["run", "candidate", "demos", "train loss", "dev loss"], args.trajectory_rows)]
    return "\n".join(head) + "\n" + body + "\n" + "\n".join(foot) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--method", required=True)
    ap.add_argument("--grid", nargs="+", default=[""], help='option sets, e.g. "" "steps=50" (quote each)')
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--ii-train", type=int, default=32)
    ap.add_argument("--ii-dev", type=int, default=32)
    ap.add_argument("--runs", type=Path, default=Path("runs/dev_sweep"))
    ap.add_argument("--reuse", action="store_true", help="score saved prompts fitted with the same options again")
    ap.add_argument("--section", default=None, help="DEV_SWEEPS.md section (default: dev_sweep_METHOD_TASK)")
    ap.add_argument("--trajectory", type=int, default=0,
                    help="also score every N-th candidate of each search run on train and dev (0 = no)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.method not in list_methods():
        raise SystemExit(f"--method: expected one of {', '.join(sorted(list_methods()))}, got {args.method!r}")
    grid = [parse_grid(g) for g in args.grid]
    torch.set_num_threads(1)
    facts = machine_facts()
    task = discrete_task(args.task, args.ii_train, args.ii_dev)
    lm = HFModel("smollm2-135m")
    dirs = [(opts, seed, args.runs / task.name / args.method / slug(opts) / f"seed{seed}")
            for opts in grid for seed in args.seeds]
    rows = [one(lm, task, args.method, opts, seed, d, args.reuse) for opts, seed, d in dirs]
    args.trajectory_rows = [r for _, _, d in dirs for r in trajectory(lm, task, d, args.trajectory)] \
        if args.trajectory else []
    body = report(args.method, task, rows, args, facts)
    print(body)
    if not args.no_write:
        write_section(args.section or f"dev_sweep_{args.method}_{task.name}", body, RESULTS,
                      title="# Dev sweeps: how defaults were chosen (dev only, never test)")


if __name__ == "__main__":
    main()
