"""How far can any text prompt take a model on a task? The task's own instruction and k examples, on dev only.

An LLM optimizer searches for an instruction and examples. The best it can hope to find is about
the task's own (reference) instruction with many examples. This script scores exactly that, on the
dev rows of the split the benches use (`bench/llm_opt_vs_peers.py`), for several models: the
generic instruction the optimizers start from and the task's reference instruction, each with
k = 0, 4, 8, 16 and 31 random training examples (seeds 0-2 for k > 0). Where even the reference
instruction with 31 examples stays near 0, no search over text can show a meaningful gain on that
model, and the bench's gains there are noise. Test is never scored.

    .venv/bin/python bench/investigations/text_ceiling.py --tasks antonyms sum singular_to_plural --models smollm2-135m gemma3-270m
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for the bench library
from common import II_INSTRUCTIONS, command_line, md_table, now, peers_task, progress, write_section  # noqa: E402

from promptlift.artifacts import TextPrompt  # noqa: E402
from promptlift.engine.evaluate import evaluate  # noqa: E402
from promptlift.lm.hf import HFModel  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "DEV_SWEEPS.md"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["antonyms", "sum", "singular_to_plural"])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m"])
    ap.add_argument("--shots", nargs="+", type=int, default=[0, 4, 8, 16, 31])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for model in args.models:
        lm = HFModel(model)
        for name in args.tasks:
            task = peers_task(name, 0)
            instructions = [("generic (the optimizers' start)", task.instruction),
                            ("the task's reference", II_INSTRUCTIONS[name])]
            for label, instruction in instructions:
                for k in args.shots:
                    accs = []
                    for seed in (args.seeds if k else args.seeds[:1]):
                        demos = random.Random(seed).sample(task.train, min(k, len(task.train)))
                        accs.append(100 * evaluate(lm, task, TextPrompt(instruction=instruction, demos=demos),
                                                   split="dev", progress=False).accuracy)
                    spread = f" ± {statistics.stdev(accs):.1f}" if len(accs) > 1 else ""
                    rows.append([model, name, label, k, f"{statistics.mean(accs):.1f}{spread}", f"{max(accs):.1f}"])
                    progress(" | ".join(str(x) for x in rows[-1]))
    body = "\n".join([
        f"## Text-prompt ceiling on dev: the reference instruction with k examples ({now()})", "",
        f"Command: `{command_line()}`  ",
        "Data: the split of bench/llm_opt_vs_peers.py (its dev rows; test is never scored). Examples are drawn at "
        "random from its training rows (seeds as listed; k = 0 is one run). Exact match, %.", "",
        md_table(["model", "task", "instruction", "examples k", "dev % (mean ± std over seeds)", "dev % (best seed)"],
                 rows), ""])
    print(body)
    if not args.no_write:
        write_section("text_ceiling", body, RESULTS, title="# Dev sweeps: how defaults were chosen (dev only, never test)")


if __name__ == "__main__":
    main()
