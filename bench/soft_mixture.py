"""Prompt tuning vs a mixture of soft prompts (soft-mixture, Qin & Eisner 2021) on SST-2, same model, data,
number of vectors per prompt, epochs, batch size, learning rate and selection on dev.

    python bench/soft_mixture.py                                     # 3 seeds, full test
    python bench/soft_mixture.py --seeds 0 --epochs 4 --test-limit 200 --variants prompt-tuning   # one piece

Variants: `prompt-tuning` (one prompt from the instruction), `soft-mixture` (K=3: the instruction, the label
words, sampled tokens; learned weights), `soft-mixture-gate` (the same with `gate=input`), `dynamic-prompting`
(a pool of prompts of tokens/4, tokens/2 and tokens vectors, one picked per input). Each run's
result.json is kept under --runs (default bench/.runs/soft_mixture), so variants can be run one at a time (each
within a short CPU slot) and the section is written from every run found there with the same settings.
Members' own test scores and weights come from the mixture's result.json (`members`).

Writes its section of BENCHMARKS.md with the command, the date and the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SST2, command_line, machine_facts, md_table, now, progress, write_section  # noqa: E402

import promptlift  # noqa: E402
from promptlift.lm.hf import HFModel  # noqa: E402
from promptlift.registry import get_method  # noqa: E402
from promptlift.task import Task  # noqa: E402

VARIANTS = {"prompt-tuning": ("prompt-tuning", {}), "soft-mixture": ("soft-mixture", {}),
            "soft-mixture-gate": ("soft-mixture", {"gate": "input"}), "dynamic-prompting": ("dynamic-prompting", {})}


def settings(args) -> dict:
    return {"tokens": args.tokens, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
            "members": args.members, "test_limit": args.test_limit}


def run_one(lm, task: Task, variant: str, seed: int, args, root: Path) -> dict:
    method, extra = VARIANTS[variant]
    opts = {"tokens": args.tokens, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, **extra}
    if method == "soft-mixture":
        opts["members"] = args.members
    if method != "prompt-tuning":
        opts["weights_lr"] = args.weights_lr or get_method(method).Config().weights_lr
    wlr = opts.get("weights_lr")
    out = root / (f"{variant}-s{seed}" if wlr in (None, 1.0) else f"{variant}-w{wlr:g}-s{seed}")
    run = promptlift.optimize(method, lm, task, out=out, seed=seed, progress=False, overwrite=True, **opts)
    steps = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    step_s = statistics.median(h["step_seconds"] for h in steps if "step_seconds" in h)
    row = {"variant": variant, "seed": seed, "settings": settings(args), "dev": run.dev.accuracy,
           "test": run.test.accuracy, "step_s": step_s, "members": run.details.get("members"), "weights_lr": wlr,
           "command": command_line(), "date": now()}
    (out / "bench.json").write_text(json.dumps(row, indent=1))
    return row


def pct(xs: list[float]) -> str:
    m = 100 * statistics.mean(xs)
    return f"{m:.1f}" if len(xs) < 2 else f"{m:.1f} ± {100 * statistics.stdev(xs):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated; '' runs nothing and only "
                    "rewrites the section from the runs kept")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tokens", type=int, default=20, help="vectors per prompt")
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-2)
    ap.add_argument("--weights-lr", type=float, default=None, help="the mixtures' weights_lr (default: the "
                    "method's; rows keep theirs)")
    ap.add_argument("--test-limit", type=int, default=0, help="score only the first N test examples (0: all)")
    ap.add_argument("--runs", type=Path, default=Path(__file__).resolve().parent / ".runs" / "soft_mixture")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args()

    progress("loading model and data")
    lm = HFModel("smollm2-135m") if args.variants else None
    task = Task.from_dir(SST2)
    if args.test_limit:
        task = dataclasses.replace(task, test=task.test[: args.test_limit])
    args.runs.mkdir(parents=True, exist_ok=True)
    for variant in [v for v in args.variants.split(",") if v]:
        for seed in args.seeds:
            r = run_one(lm, task, variant, seed, args, args.runs)
            progress(f"{variant} seed {seed}: dev {r['dev']:.3f} test {r['test']:.3f} step {r['step_s']:.2f}s")
    if args.no_write:
        return
    found = [json.loads(p.read_text()) for p in sorted(args.runs.glob("*/bench.json"))]
    found = [r for r in found if r["settings"] == settings(args)]
    rows, member_rows = [], []
    keys = sorted({(list(VARIANTS).index(r["variant"]), r.get("weights_lr") or 0) for r in found})
    for vi, wlr in keys:
        variant = list(VARIANTS)[vi]
        rs = [r for r in found if r["variant"] == variant and (r.get("weights_lr") or 0) == wlr]
        name = variant if not wlr else f"{variant}, weights_lr {wlr:g}"
        rows.append([name, len(rs), pct([r["test"] for r in rs]), pct([r["dev"] for r in rs]),
                     f"{statistics.median(r['step_s'] for r in rs):.2f}"])
        for r in rs:
            for i, m in enumerate(r["members"] or []):
                member_rows.append([f"{name} seed {r['seed']}", i, m["init"][:40].strip(), f"{m['weight']:.2f}",
                                    f"{100 * m['dev']:.1f}", f"{100 * m['test']:.1f}"])
    facts = machine_facts()
    n_test = len(task.test)
    commands = "\n".join(f"- {r['date']}: `{r['command']}`" for r in sorted(found, key=lambda r: r["date"]))
    small = len(args.seeds) < 3 or args.test_limit or args.epochs < 10
    scale = (f"**A small run** ({len(args.seeds)} seed(s), {args.epochs} epochs, {n_test} test rows): a 95 % interval "
             f"on {n_test} rows is about ±{100 * 1.96 * (0.25 / n_test) ** 0.5:.0f} points, so these rows rank "
             "nothing; they show the methods run end to end on the real model and what a step costs.\n\n"
             if small else "")
    body = f"""## Mixture of soft prompts vs prompt tuning: SST-2 (`bench/soft_mixture.py`)

Section written {now()} from every run kept under {args.runs.name}/ with these settings:
{commands}

Model smollm2-135m (fp32, CPU, {facts['cpu']}, torch threads {facts['torch_threads']}); data SST-2 16-shot
(train 32 / dev 32), test n={n_test}; {args.tokens} vectors per prompt, {args.members} members, {args.epochs} epochs of
batch {args.batch_size}, lr {args.lr}; best epoch on dev.

{scale}{md_table(["variant", "seeds", "test acc %", "dev acc %", "median s/step"], rows)}

Each member alone (its vectors as trained inside the mixture or pool), with its mean weight on dev + test (for
dynamic prompting: the share of those inputs its gate picks it for):

{md_table(["run", "member", "init", "weight", "dev %", "test %"], member_rows, "lrlrrr")}
"""
    write_section("soft_mixture", body)
    progress("wrote BENCHMARKS.md section soft_mixture")


if __name__ == "__main__":
    main()
