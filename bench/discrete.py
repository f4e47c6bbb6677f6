"""Token-prompt and black-box methods against zero-shot on SST-2 with smollm2-135m.

    python bench/discrete.py                                    # every method, seed 0, first 300 test rows
    python bench/discrete.py --seeds 0 1 2 --methods pez bbt --reuse   # add seeds; reuse finished runs
    python bench/discrete.py --set autoprompt.steps=10 --test-limit 100 --no-write      # quick look
    python bench/discrete.py --methods pez --set pez.instruction=none --runs /tmp/v --section variant

Each method runs through `promptlift.optimize` with its defaults (unless `--set`),
selecting on train/dev only; the chosen prompt is then scored once on the
first `--test-limit` test rows (0 = all) by the engine. Zero-shot is the task's
instruction; "no-instruction" is the same with an empty instruction (the input
alone), which this model answers better. For `project` without a source, prompt tuning is trained first, so
its row also gives the soft prompt's dev accuracy before projection.

Every run writes `bench.json` in its run directory (`--runs`); `--reuse` reads
those instead of running again, so seeds can be added one at a time. Writes a
dated section of bench/DISCRETE_RESULTS.md (one section, replaced on each
write, made from every run found for the methods and seeds asked).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, loadavg, machine_facts, md_table, now, progress, timed, write_section  # noqa: E402

import promptlift  # noqa: E402
from promptlift.artifacts import TextPrompt, TokenPrompt  # noqa: E402
from promptlift.lm.hf import HFModel  # noqa: E402
from promptlift.task import Task  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "sst2"
RESULTS = Path(__file__).resolve().parent / "DISCRETE_RESULTS.md"
METHODS = ["zero-shot", "no-instruction", "pez", "autoprompt", "project", "bbt"]
BASELINES = {"no-instruction": ""}  # rows that are a fixed instruction, not a method: scored as they are


def parse_sets(items: list[str]) -> dict[str, dict[str, str]]:
    """`method.option=value` -> {method: {option: value}} (values stay strings; the method's config types them)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, _, value = item.partition("=")
        method, _, opt = key.partition(".")
        if not (method and opt and _):
            raise SystemExit(f"--set expects METHOD.OPTION=VALUE, got {item!r}")
        out.setdefault(method, {})[opt] = value
    return out


def run_one(lm, task, method: str, seed: int, opts: dict, run_dir: Path, test_limit: int | None) -> dict:
    """Optimize (or take a baseline's fixed prompt), then score on test once; the numbers the report needs."""
    with timed() as t:
        if method in BASELINES:
            p = TextPrompt(instruction=BASELINES[method])
            dev, cost = promptlift.evaluate(lm, task, p, split="dev", progress=False), {}
        else:
            run = promptlift.optimize(method, lm, task, out=run_dir, overwrite=True, seed=seed, progress=False,
                                      eval_splits=("dev",), **opts)
            p, dev, cost = run.prompt, run.dev, run.cost
    with timed() as te:
        test = promptlift.evaluate(lm, task, p, split="test", limit=test_limit, progress=False)
    spent = p.meta.get("cost", {})
    return {
        "method": method, "seed": seed, "options": opts, "dev": dev.accuracy if dev else None,
        "test": test.accuracy, "test_n": test.n, "ci95": test.ci95,
        "predicted": {k: v["predicted"] for k, v in test.per_class.items()},
        "fit_wall_s": round(t.wall, 1), "fit_cpu_s": round(t.cpu, 1), "test_wall_s": round(te.wall, 1),
        "forward": cost.get("forward", 0), "backward": cost.get("backward", 0),
        "target_calls": spent.get("target_calls"), "stopped": p.meta.get("stopped", ""), "type": p.type,
        "text": p.text if isinstance(p, TokenPrompt) else None,
        "reencodes": p.meta.get("reencodes"), "dev_before": p.meta.get("dev_before"),
        "dev_after": p.meta.get("dev_after"), "loadavg_end": loadavg(),
    }


def mean_std(xs: list[float]) -> str:
    xs = [100 * x for x in xs if x is not None]
    if not xs:
        return "–"
    return f"{xs[0]:.1f}" if len(xs) == 1 else f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"


def report(rows: list[dict], args, facts: dict, test_n: int) -> str:
    """The markdown section: command, setting, summary per method, and every run."""
    methods = [m for m in args.methods if any(r["method"] == m for r in rows)]
    zs = [r["test"] for r in rows if r["method"] == "zero-shot"]
    summary = []
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        gain = (f"{100 * (statistics.mean(r['test'] for r in rs) - statistics.mean(zs)):+.1f}" if zs else "–")
        summary.append([m, len(rs), mean_std([r["test"] for r in rs]), gain, mean_std([r["dev"] for r in rs]),
                        f"{statistics.mean(r['fit_wall_s'] for r in rs):.0f}",
                        f"{statistics.mean(r['forward'] for r in rs):.0f}",
                        f"{statistics.mean(r['backward'] for r in rs):.0f}",
                        "–" if rs[0]["target_calls"] is None
                        else f"{statistics.mean(r['target_calls'] for r in rs):.0f}"])
    per_run = []
    for r in sorted(rows, key=lambda r: (methods.index(r["method"]), r["seed"])):
        extra = ""
        if r["dev_before"] is not None:
            extra = f"soft dev {100 * r['dev_before']:.1f} → projected {100 * (r['dev_after'] or 0):.1f}"
        text = "–" if r["text"] is None else "`" + json.dumps(r["text"])[1:-1].replace("|", "\\|") + "`"
        ci = f"{100 * r['test']:.1f} [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"
        share = " · ".join(f"{k} {100 * v / r['test_n']:.0f}%" for k, v in sorted(r["predicted"].items()))
        per_run.append([r["method"], r["seed"], ci, share, "–" if r["dev"] is None else f"{100 * r['dev']:.1f}",
                        r["fit_wall_s"], text,
                        "–" if r["reencodes"] is None else ("yes" if r["reencodes"] else "no"), extra or "–"])
    opts = {m: o for m, o in parse_sets(args.set).items() if m in methods}
    return "\n".join([
        f"## Token prompts and black-box tuning vs zero-shot: SST-2, smollm2-135m ({now()})",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {facts['cpu']}, {facts['usable_cpus']} usable CPUs, torch {facts['torch']} "
        f"({facts['torch_threads']} thread(s)), transformers {facts['transformers']}; load average at start "
        f"{facts['loadavg_start']}, at end {loadavg()} (a shared machine: wall times vary with other work).  ",
        f"Data: SST-2 16-shot (train 32 / dev 32; selection on these only), test: the first {test_n} rows of 1821. "
        f"Method options: defaults" + (f", except {json.dumps(opts)}" if opts else "") + ".",
        "",
        md_table(["method", "seeds", "test acc %", "vs zero-shot (pts)", "dev acc %", "fit s (wall)", "forward",
                  "backward", "target calls"], summary),
        "",
        "Mean ± sample std over seeds. forward/backward: passes of the model during the fit (batches), "
        "including dev evaluations; target calls: examples scored by the search loop (search methods).",
        "",
        md_table(["method", "seed", "test % [95% CI]", "predicted share", "dev %", "fit s",
                  "prompt text (token prompts)", "re-encodes", "projection"], per_run, "lrrrrrlll"),
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--test-limit", type=int, default=300, help="first N test rows (0 = all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=Path, default=Path("/tmp/promptlift-bench-discrete"))
    ap.add_argument("--set", action="append", default=[], help="METHOD.OPTION=VALUE (repeatable)")
    ap.add_argument("--reuse", action="store_true", help="read finished runs' bench.json instead of running again")
    ap.add_argument("--no-write", action="store_true", help="print the section, do not write DISCRETE_RESULTS.md")
    ap.add_argument("--section", default="discrete", help="name of the DISCRETE_RESULTS.md section to replace")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    facts = machine_facts()
    sets = parse_sets(args.set)
    task = Task.from_dir(DATA)
    limit = args.test_limit or None
    lm = HFModel("smollm2-135m")
    rows = []
    for seed in args.seeds:
        for m in args.methods:
            if m in ("zero-shot", *BASELINES) and seed != args.seeds[0]:
                continue  # deterministic: one run
            run_dir = args.runs / m / f"seed{seed}"
            done = run_dir / "bench.json"
            if args.reuse and done.exists():
                r = json.loads(done.read_text())
                if r.get("options") == sets.get(m, {}) and r["test_n"] == (limit or len(task.test)):
                    rows.append(r)
                    progress(f"{m} seed {seed}: reused (test {100 * r['test']:.1f})")
                    continue
            progress(f"{m} seed {seed}: start (load {loadavg()})")
            r = run_one(lm, task, m, seed, sets.get(m, {}), run_dir, limit)
            run_dir.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps(r, indent=1))
            rows.append(r)
            progress(f"{m} seed {seed}: dev {r['dev']}, test {100 * r['test']:.1f}, fit {r['fit_wall_s']} s"
                     + (f", text {r['text']!r}" if r["text"] is not None else ""))
    body = report(rows, args, facts, limit or len(task.test))
    print(body)
    if not args.no_write:
        write_section(args.section, body, RESULTS, title="# Discrete and black-box prompt results")
        progress(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
