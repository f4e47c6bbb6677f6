"""Token-prompt and black-box methods against zero-shot and prompt tuning, with smollm2-135m.

    python bench/discrete.py                                    # the default methods, seed 0, first 300 test rows
    python bench/discrete.py --seeds 0 1 2 --methods pez bbt --reuse   # add seeds; reuse finished runs
    python bench/discrete.py --set autoprompt.steps=10 --test-limit 100 --no-write      # quick look
    python bench/discrete.py --methods pez --set pez.instruction=none --runs /tmp/v --section variant
    python bench/discrete.py --test-limit 0 --reuse             # the full test split (1,821 rows)
    python bench/discrete.py --task antonyms --methods zero-shot pez   # an instruction-induction task

`--methods` takes the baselines below and any registered method name
(`promptlift methods`). `--task` is `sst2` (SST-2 16-shot: train 32 / dev 32, the
full test split of 1,821 rows) or an instruction-induction task
(`../shared/datasets/instruction_induction/<task>`, generation, exact match): its
train and dev are fixed slices of `train.jsonl` (rows 0-31 and 32-63 after a
seed-0 shuffle; `--ii-train`/`--ii-dev` change the sizes), its test the task's
100 test rows, never used for selection. On a generation task the forward-only
searches (AutoPrompt's swap scores, BBT, BBTv2, BDPL, RLPrompt) minimise minus
the reference output's log-probability (`engine.evaluate.example_losses`) and
select on dev by exact match. A method that does not apply to the task (e.g.
calibration on a generation task) is listed as not applicable, with its own
reason.

Each method runs through `promptlift.optimize` with its defaults (unless `--set`),
selecting on train/dev only; the chosen prompt is then scored once on the
first `--test-limit` test rows (0 = all) by the engine. Zero-shot is the task's
instruction; "no-instruction" is the same with an empty instruction (the input
alone), which this model answers better; "calibrated" is promptlift's contextual
calibration of zero-shot; "few-shot" is promptlift's few-shot baseline (the
instruction and 4 random training examples, seeded), the fair comparison for the
token methods, whose `instruction=auto` may keep the same kind of examples. For `project` without a source, prompt tuning is trained first, so
its row also gives the soft prompt's dev accuracy before projection.

Every run writes `bench.json` in its run directory (`--runs`); `--reuse` reads
those instead of running again, so seeds can be added one at a time; a finished
run asked for on another number of test rows is scored again from its saved
prompt (`bench-testN.json`) without fitting again. Writes a dated section of
bench/DISCRETE_RESULTS.md (one section, replaced on each write, made from every
run found for the methods and seeds asked; default name `discrete` for SST-2,
`discrete_<task>` otherwise).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (II_INSTRUCTIONS, command_line, discrete_task, loadavg, machine_facts, md_table, now,  # noqa: E402
                    progress, timed, write_section)

import promptlift  # noqa: E402
from promptlift.artifacts import TextPrompt, TokenPrompt, load  # noqa: E402
from promptlift.errors import ConfigError  # noqa: E402
from promptlift.lm.hf import HFModel  # noqa: E402
from promptlift.registry import get_method, list_methods  # noqa: E402
from promptlift.task import Task  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "DISCRETE_RESULTS.md"
METHODS = ["zero-shot", "no-instruction", "pez", "autoprompt", "project", "bbt"]
BASELINES = {"no-instruction": ""}  # rows that are a fixed instruction, not a method: scored as they are
DETERMINISTIC = ("zero-shot", "calibrated", *BASELINES)  # one run, whatever the seeds


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


def not_applicable(lm, task, method: str, opts: dict) -> str | None:
    """The method's own reason for refusing this model and task, or None when it applies."""
    if method in BASELINES:
        return None
    try:
        get_method(method)(**opts).check(lm, task)
    except ConfigError as e:
        return str(e)
    return None


def rescore(lm, task, r: dict, run_dir: Path, test_limit: int | None) -> dict:
    """A finished run's prompt scored on another number of test rows (no new fit)."""
    p = TextPrompt(instruction=BASELINES[r["method"]]) if r["method"] in BASELINES else load(run_dir / "prompt.json")
    with timed() as te:
        test = promptlift.evaluate(lm, task, p, split="test", limit=test_limit, progress=False)
    return {**r, "test": test.accuracy, "test_n": test.n, "ci95": test.ci95,
            "predicted": {k: v["predicted"] for k, v in test.per_class.items()}, "test_wall_s": round(te.wall, 1),
            "rescored_from_n": r["test_n"], "loadavg_end": loadavg()}


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
        "dev_after": p.meta.get("dev_after"), "loadavg_end": loadavg(), "task": task.name,
    }


def with_demos(r: dict, run_dir: Path) -> dict:
    """The row with `demos`: how many demonstrations its prompt keeps (read from prompt.json for older rows)."""
    if "demos" not in r:
        f = run_dir / "prompt.json"
        r = {**r, "demos": len(json.loads(f.read_text()).get("demos") or []) if f.exists() else 0}
    return r


def mean_std(xs: list[float]) -> str:
    xs = [100 * x for x in xs if x is not None]
    if not xs:
        return "–"
    return f"{xs[0]:.1f}" if len(xs) == 1 else f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"


def recovered(rows: list[dict], method: str = "bbt", reference: str = "prompt-tuning") -> str | None:
    """"BBT recovers X % of prompt tuning's gain over zero-shot" (test means over seeds), when all three ran."""
    mean = {m: statistics.mean(r["test"] for r in rows if r["method"] == m) for m in ("zero-shot", method, reference)
            if any(r["method"] == m for r in rows)}
    if len(mean) < 3:
        return None
    gain_ref, gain = mean[reference] - mean["zero-shot"], mean[method] - mean["zero-shot"]
    if gain_ref <= 0:
        return f"{reference} does not gain over zero-shot here ({100 * gain_ref:+.1f} pts), so the ratio is undefined"
    return (f"{method} gains {100 * gain:+.1f} pts over zero-shot, {reference} {100 * gain_ref:+.1f} pts: "
            f"{method} recovers {100 * gain / gain_ref:.0f} % of {reference}'s gain (target: at least 50 %)")


def report(rows: list[dict], args, facts: dict, test_n: int, task: Task, skipped: dict[str, str]) -> str:
    """The markdown section: command, setting, summary per method, and every run."""
    methods = [m for m in args.methods if any(r["method"] == m for r in rows)]
    zs = [r["test"] for r in rows if r["method"] == "zero-shot"]
    # the bar: the better of zero-shot and calibrated zero-shot (no-instruction is reported apart)
    base = {m: statistics.mean(r["test"] for r in rows if r["method"] == m) for m in ("zero-shot", "calibrated")
            if any(r["method"] == m for r in rows)}
    best = max(base.values()) if base else None
    summary = []
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        gain = (f"{100 * (statistics.mean(r['test'] for r in rs) - statistics.mean(zs)):+.1f}" if zs else "–")
        vs_best = "–" if best is None else f"{100 * (statistics.mean(r['test'] for r in rs) - best):+.1f}"
        summary.append([m, len(rs), mean_std([r["test"] for r in rs]), gain, vs_best, mean_std([r["dev"] for r in rs]),
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
        if r.get("demos"):  # the examples a prompt keeps after its tokens or vectors
            text = (f"({r['type']})" if text == "–" else text) + f" + {r['demos']} demos"
        ci = f"{100 * r['test']:.1f} [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"
        share = " · ".join(f"{k} {100 * v / r['test_n']:.0f}%" for k, v in sorted(r["predicted"].items())) or "–"
        per_run.append([r["method"], r["seed"], ci, share, "–" if r["dev"] is None else f"{100 * r['dev']:.1f}",
                        r["fit_wall_s"], text,
                        "–" if r["reencodes"] is None else ("yes" if r["reencodes"] else "no"), extra or "–"])
    opts = {m: o for m, o in parse_sets(args.set).items() if m in methods}
    if task.name == "sst2":
        data = ("Data: SST-2 16-shot (train 32 / dev 32; selection on these only), test: "
                + (f"all {test_n} rows." if test_n == len(task.test) else f"the first {test_n} rows of {len(task.test)}."))
        title = "SST-2"
    else:
        data = (f"Data: instruction induction `{task.name}` (generation, exact match), train {len(task.train)} / dev "
                f"{len(task.dev)} rows from a fixed seed-0 shuffle of its train.jsonl (selection on these only), test: "
                + (f"all {test_n} rows" if test_n == len(task.test) else f"the first {test_n} of {len(task.test)} rows")
                + f". Zero-shot instruction: \"{task.instruction}\"")
        title = f"instruction induction `{task.name}`"
    ratio = recovered(rows)
    notes = [f"Not applicable: {m} ({why})." for m, why in skipped.items()]
    if ratio:
        notes.append(f"BBT vs prompt tuning: {ratio}.")
    return "\n".join([
        f"## Token prompts and black-box tuning vs zero-shot: {title}, smollm2-135m ({now()})",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {facts['cpu']}, {facts['usable_cpus']} usable CPUs, torch {facts['torch']} "
        f"({facts['torch_threads']} thread(s)), transformers {facts['transformers']}; load average at start "
        f"{facts['loadavg_start']}, at end {loadavg()} (a shared machine: wall times vary with other work).  ",
        data + " Method options: defaults" + (f", except {json.dumps(opts)}" if opts else "") + ".",
        "",
        md_table(["method", "seeds", "test acc %", "vs zero-shot (pts)",
                  "vs best of zero-shot/calibrated (pts)", "dev acc %", "fit s (wall)", "forward",
                  "backward", "target calls"], summary),
        "",
        "Mean ± sample std over seeds. forward/backward: passes of the model during the fit (batches), "
        "including dev evaluations; target calls: examples scored by the search loop (search methods).",
        *(["", "  \n".join(notes)] if notes else []),
        "",
        md_table(["method", "seed", "test % [95% CI]", "predicted share", "dev %", "fit s",
                  "prompt text (token prompts), demos kept", "re-encodes", "projection"], per_run, "lrrrrrlll"),
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=METHODS,
                    help=f"baselines ({', '.join(BASELINES)}) and registered methods (default: {' '.join(METHODS)})")
    ap.add_argument("--task", default="sst2", help=f"sst2 or an instruction-induction task: {', '.join(II_INSTRUCTIONS)}")
    ap.add_argument("--ii-train", type=int, default=32, help="instruction induction: train rows")
    ap.add_argument("--ii-dev", type=int, default=32, help="instruction induction: dev rows")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--test-limit", type=int, default=300, help="first N test rows (0 = all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=Path, default=Path("/tmp/promptlift-bench-discrete"))
    ap.add_argument("--set", action="append", default=[], help="METHOD.OPTION=VALUE (repeatable)")
    ap.add_argument("--reuse", action="store_true", help="read finished runs' bench.json instead of running again")
    ap.add_argument("--no-write", action="store_true", help="print the section, do not write DISCRETE_RESULTS.md")
    ap.add_argument("--section", default=None,
                    help="name of the DISCRETE_RESULTS.md section to replace (default: discrete[_TASK])")
    args = ap.parse_args()
    unknown = [m for m in args.methods if m not in BASELINES and m not in list_methods()]
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)}; expected {', '.join(BASELINES)} or one of "
                         f"{', '.join(sorted(list_methods()))}")
    section = args.section or ("discrete" if args.task == "sst2" else f"discrete_{args.task}")
    runs = args.runs if args.task == "sst2" else args.runs / args.task
    torch.set_num_threads(args.threads)
    facts = machine_facts()
    sets = parse_sets(args.set)
    task = discrete_task(args.task, args.ii_train, args.ii_dev)
    limit = args.test_limit or None
    n_test = min(limit or len(task.test), len(task.test))
    lm = HFModel("smollm2-135m")
    rows, skipped = [], {}
    for seed in args.seeds:
        for m in args.methods:
            if m in DETERMINISTIC and seed != args.seeds[0]:
                continue  # deterministic: one run
            if m in skipped or (why := not_applicable(lm, task, m, sets.get(m, {}))):
                skipped.setdefault(m, why)
                continue
            run_dir = runs / m / f"seed{seed}"
            done = run_dir / "bench.json"
            if args.reuse and done.exists():
                r = json.loads(done.read_text())
                if r.get("options") == sets.get(m, {}) and r["test_n"] == n_test:
                    rows.append(with_demos(r, run_dir))
                    progress(f"{m} seed {seed}: reused (test {100 * r['test']:.1f})")
                    continue
                other = run_dir / f"bench-test{n_test}.json"
                if other.exists():
                    rows.append(with_demos(json.loads(other.read_text()), run_dir))
                    progress(f"{m} seed {seed}: reused, {n_test} test rows (test {100 * rows[-1]['test']:.1f})")
                    continue
                if r.get("options") == sets.get(m, {}) and (m in BASELINES or (run_dir / "prompt.json").exists()):
                    progress(f"{m} seed {seed}: score the saved prompt on {n_test} test rows (load {loadavg()})")
                    rows.append(with_demos(rescore(lm, task, r, run_dir, limit), run_dir))
                    other.write_text(json.dumps(rows[-1], indent=1))
                    progress(f"{m} seed {seed}: test {100 * rows[-1]['test']:.1f} ({rows[-1]['test_wall_s']} s)")
                    continue
            progress(f"{m} seed {seed}: start (load {loadavg()})")
            r = with_demos(run_one(lm, task, m, seed, sets.get(m, {}), run_dir, limit), run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps(r, indent=1))
            rows.append(r)
            progress(f"{m} seed {seed}: dev {r['dev']}, test {100 * r['test']:.1f}, fit {r['fit_wall_s']} s"
                     + (f", text {r['text']!r}" if r["text"] is not None else ""))
    body = report(rows, args, facts, n_test, task, skipped)
    print(body)
    if not args.no_write:
        write_section(section, body, RESULTS, title="# Discrete and black-box prompt results")
        progress(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
