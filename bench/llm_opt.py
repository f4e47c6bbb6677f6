"""promptlift's LLM optimizers on SST-2 with SmolLM2-135M as both target and proposer.

    python bench/llm_opt.py                                   # 5 methods, seeds 0 1 2, first 200 test rows
    python bench/llm_opt.py --methods grips --seeds 0 --test-limit 50 --budget calls=100   # quick

Every run goes through `promptlift.optimize` (selection on dev only; test scored once,
at the end) with the same budget cap. Reported per method: dev and test accuracy
(mean ± sample std over seeds), target calls and optimizer calls as the search counts
them (one target call = one example scored by the target; one optimizer call = one
proposal generated), and wall time of the whole run (search + final dev/test
evaluation). The zero-shot instruction is the reference. The models' call cache is
off, so wall times are real.

Writes a dated section to bench/LLM_OPT_RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("PROMPTLIFT_NO_CACHE", "1")  # before promptlift is imported: real calls, real wall times

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SST2, command_line, machine_facts, md_table, now, progress, write_section  # noqa: E402

import promptlift  # noqa: E402
from promptlift.artifacts import TextPrompt  # noqa: E402
from promptlift.engine.evaluate import evaluate  # noqa: E402
from promptlift.lm.hf import HFModel  # noqa: E402
from promptlift.task import Task  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "LLM_OPT_RESULTS.md"
METHODS = ["ape", "opro", "protegi", "grips", "bootstrap-fewshot"]


def parse_options(items: list[str]) -> dict[str, dict]:
    """`method:key=value` -> {method: {key: value}} (values stay strings; the method's config coerces them)."""
    out: dict[str, dict] = {}
    for item in items:
        method, kv = item.split(":", 1)
        k, v = kv.split("=", 1)
        out.setdefault(method, {})[k] = v
    return out


def mean_std(xs: list[float], scale: float = 100.0) -> str:
    if not xs:
        return "–"
    m = statistics.mean(xs) * scale
    return f"{m:.1f} ± {statistics.stdev(xs) * scale:.1f}" if len(xs) > 1 else f"{m:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--test-limit", type=int, default=200, help="first N test rows (0 = all)")
    ap.add_argument("--budget", default="calls=300", help="search budget of every run, as --budget takes it")
    ap.add_argument("--option", action="append", default=[], help="method:key=value, repeatable")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default=str(SST2))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--note", default="", help="a sentence added to the report (e.g. which code was run)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    options = parse_options(args.option)
    facts = machine_facts()
    started = now()

    lm = HFModel(args.model)
    task = Task.from_dir(args.data)
    if args.test_limit:
        task = task.with_splits(test=task.test[: args.test_limit])
    progress(f"data: train {len(task.train)}, dev {len(task.dev)}, test {len(task.test)}")

    t0 = time.perf_counter()
    zero = TextPrompt(instruction=task.instruction)
    zero_dev = evaluate(lm, task, zero, split="dev", progress=False).accuracy
    zero_test = evaluate(lm, task, zero, split="test", progress=False).accuracy
    zero_s = time.perf_counter() - t0
    progress(f"zero-shot: dev {zero_dev:.3f}, test {zero_test:.3f} ({zero_s:.0f}s)")

    rows, per_seed = [], []
    for method in args.methods:
        runs = []
        for seed in args.seeds:
            t = time.perf_counter()
            run = promptlift.optimize(method, lm, task, seed=seed, budget=args.budget, progress=False,
                                      **options.get(method, {}))
            wall = time.perf_counter() - t
            cost = run.prompt.meta.get("cost", {})
            search = run.prompt.meta.get("search", {})
            runs.append({"dev": run.dev.accuracy, "test": run.test.accuracy, "wall": wall, **cost,
                         "stopped": search.get("stopped", ""), "skipped": sum(search.get("skipped", {}).values()),
                         "prompt": run.prompt})
            instr = getattr(run.prompt, "instruction", None)
            if instr is None and hasattr(run.prompt, "inner"):
                instr = getattr(run.prompt.inner, "instruction", "")
            demos = len(getattr(run.prompt, "demos", []) or [])
            per_seed.append([method, seed, f"{run.dev.accuracy * 100:.1f}", f"{run.test.accuracy * 100:.1f}",
                             cost.get("target_calls", "–"), cost.get("optimizer_calls", "–"), f"{wall:.0f}",
                             search.get("stopped", "") or "steps", sum(search.get("skipped", {}).values()),
                             "`" + (instr or "").replace("|", "/")[:70] + "`" + (f" + {demos} demos" if demos else "")])
            progress(f"{method} seed {seed}: dev {run.dev.accuracy:.3f} test {run.test.accuracy:.3f} "
                     f"target {cost.get('target_calls')} optimizer {cost.get('optimizer_calls')} {wall:.0f}s")
        rows.append([method, mean_std([r["dev"] for r in runs]), mean_std([r["test"] for r in runs]),
                     f"{statistics.mean(r['target_calls'] for r in runs):.0f}",
                     f"{statistics.mean(r['optimizer_calls'] for r in runs):.0f}",
                     f"{statistics.mean(r['wall'] for r in runs):.0f}"])

    opts = "; ".join(f"{m}: {', '.join(f'{k}={v}' for k, v in o.items())}" for m, o in options.items()) or "defaults"
    body = f"""## LLM optimizers on SST-2, {args.model} as target and proposer ({started})

Command: `{command_line()}`  
Date: {started} (finished {now()})  
Machine: {facts['cpu']}, {facts['usable_cpus']} usable CPUs, torch {facts['torch']} ({facts['torch_threads']} threads), transformers {facts['transformers']}, Python {facts['python']}; load average at start {facts['loadavg_start']} (a shared machine: wall times vary with other work).  
Data: SST-2 16-shot split (train {len(task.train)}, dev {len(task.dev)}), test = first {len(task.test)} rows of the SST-2 test set. Selection on dev only; test scored once per run.  
Code: promptlift {promptlift.__version__} from `{Path(promptlift.__file__).parent}`.{(" " + args.note) if args.note else ""}  
Budget per run: `--budget {args.budget}` (target + optimizer calls, counted by the search loop); method options: {opts}; seeds {', '.join(map(str, args.seeds))}; the models' call cache off.

Zero-shot instruction (`{task.instruction}`): dev {zero_dev * 100:.1f} %, test {zero_test * 100:.1f} %.

{md_table(["method", "dev % (mean ± std)", "test % (mean ± std)", "target calls", "optimizer calls", "wall s / run"], rows)}

Calls are means over seeds; wall time covers the search and the final dev + test evaluation.

Per seed (stopped: why the search ended — `budget`, `patience`, `done`, or `steps` when it ran all its steps; skipped: proposals dropped as empty, unusable or duplicate):

{md_table(["method", "seed", "dev %", "test %", "target", "optimizer", "wall s", "stopped", "skipped", "prompt"], per_seed, "lrrrrrrlrl")}
"""
    path = write_section(f"llm_opt {started}", body, path=args.out, title="# LLM optimizers: measured results")
    progress(f"wrote {path}")


if __name__ == "__main__":
    main()
