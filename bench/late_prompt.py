"""Late prompt tuning vs prompt tuning: seconds per training step and accuracy after a short run.

    python bench/late_prompt.py                                  # SST-2, seed 0, test[:200]
    python bench/late_prompt.py --layers 15 20 --late-lrs 0.03 0.1 --seeds 0 1 2 --test-limit 0

Both methods train on the same model (smollm2-135m, 30 layers), data (SST-2 16-shot: train 32 / dev 32),
virtual tokens, batches, steps and selection on dev, through the one trainer; a step is the constant
prefix (batch 1) + the batch's forward + backward + optimizer step, timed by the trainer. Late prompt
tuning's gradient stops at its layer, so its backward pass runs only through the layers above it.
Target (issue 25): at least prompt tuning's accuracy at <= 0.6x its step time.

Writes its section of BENCHMARKS.md with the command, the date and the numbers.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SST2, machine_facts, md_table, now, command_line, progress, write_section  # noqa: E402

from promptlift.engine.evaluate import evaluate  # noqa: E402
from promptlift.lm.hf import HFModel  # noqa: E402
from promptlift.methods.base import RunContext  # noqa: E402
from promptlift.registry import get_method  # noqa: E402
from promptlift.task import Task  # noqa: E402


def train(name: str, lm, task: Task, args, seed: int, **options) -> dict:
    """One run of method `name` through the one trainer: its best prompt, dev score and median step seconds."""
    hist: list[dict] = []
    method = get_method(name)(tokens=args.tokens, epochs=args.epochs, batch_size=args.batch_size, **options)
    ctx = RunContext(seed=seed, progress=False, log=hist.append)
    ctx.seed_everything()
    prompt = method.fit(lm, task, ctx)
    step_s = statistics.median(h["step_seconds"] for h in hist if "step_seconds" in h)
    return {"dev": prompt.meta["best_dev"], "prompt": prompt, "step_s": step_s}


def pct(xs: list[float]) -> str:
    return f"{100 * statistics.mean(xs):.1f}" + (f" ± {100 * statistics.stdev(xs):.1f}" if len(xs) > 1 else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-2, help="prompt tuning's learning rate (its default)")
    ap.add_argument("--layers", type=int, nargs="+", default=[-1], help="late prompt layers (-1: the middle)")
    ap.add_argument("--late-lrs", type=float, nargs="+", default=[3e-2], help="late prompt tuning's learning rates")
    ap.add_argument("--test-limit", type=int, default=200, help="score the first N test examples (0: all)")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args()

    progress("loading model and data")
    lm = HFModel("smollm2-135m")
    task = Task.from_dir(SST2)
    test = task.test[: args.test_limit] if args.test_limit else task.test
    variants = [("prompt-tuning", {"lr": args.lr})]
    variants += [("late-prompt-tuning", {"lr": lr, "layer": layer}) for layer in args.layers for lr in args.late_lrs]
    res: dict[str, list[dict]] = {}
    for name, opts in variants:
        label = name + "".join(f", {k} {v:g}" for k, v in opts.items())
        for seed in args.seeds:
            r = train(name, lm, task, args, seed, **opts)
            r["test"] = evaluate(lm, task, r["prompt"], examples=test, progress=False).accuracy
            res.setdefault(label, []).append(r)
            progress(f"{label} seed {seed}: dev {r['dev']:.3f} test {r['test']:.3f} step {r['step_s']:.3f}s")
    base = statistics.median([r["step_s"] for r in next(iter(res.values()))])
    rows = []
    for label, rs in res.items():
        step = statistics.median([r["step_s"] for r in rs])
        layer = getattr(rs[0]["prompt"], "layer", 0)
        rows.append([label, layer, pct([r["test"] for r in rs]), pct([r["dev"] for r in rs]),
                     f"{step:.3f}", f"{step / base:.2f}×"])
    table = md_table(["method", "entry layer", "test acc %", "dev acc %", "median s/step", "vs prompt tuning"], rows)
    facts = machine_facts()
    steps = math.ceil(len(task.train) / args.batch_size) * args.epochs
    body = f"""## Late prompt tuning vs prompt tuning (`bench/late_prompt.py`)

Run {now()}: `{command_line()}`

Model smollm2-135m (30 layers, fp32, CPU, {facts['cpu']}, torch threads {facts['torch_threads']}); SST-2 16-shot
(train 32 / dev 32), test n={len(test)}; {args.tokens} virtual tokens, {args.epochs} epochs of batch {args.batch_size}
({steps} steps), seeds {args.seeds}; best epoch on dev.

{table}

Seconds per step: the trainer's own timing (constant prefix + batch forward + backward + optimizer step),
median over all steps and seeds, wall time on a shared 2-core machine. What this run can show: the step-time
ratio (the backward pass stops at the entry layer). What it cannot: whether the accuracy difference is real —
one seed, {len(test)} test rows (± ~{100 * 1.96 * (0.25 / max(1, len(test))) ** 0.5:.0f} points at 95 %) and {steps} steps, with no
learning-rate search for either method beyond the listed values.
"""
    print(body)
    if not args.no_write:
        write_section("late_prompt", body)


if __name__ == "__main__":
    main()
