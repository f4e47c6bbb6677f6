"""Does the tie-break of the search loop see a difference where exact match sees none? (dev only)

For each instruction-induction task (the data split of `llm_opt_vs_peers.py`), scores on the 32 dev
rows the task's instruction alone and with 4 random training examples (seeds 0-2): exact match,
and the mean log-probability of the reference answers, the value `engine/search/` breaks ties
with. Test is never touched. Prints a markdown table.

    .venv/bin/python bench/investigations/tiebreak_signal.py --tasks antonyms sum
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for the bench library
from common import peers_task  # noqa: E402

from promptlift.artifacts import TextPrompt  # noqa: E402
from promptlift.engine.evaluate import evaluate, reference_logprob  # noqa: E402
from promptlift.lm.hf import HFModel  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["antonyms", "sum"])
    ap.add_argument("--demos", type=int, default=4)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(1)
    lm = HFModel("smollm2-135m")
    print("| task | prompt | dev exact match % | dev mean log P(reference) |\n| --- | --- | ---: | ---: |")
    for name in args.tasks:
        task = peers_task(name, 0)
        prompts = [("instruction alone", TextPrompt(instruction=task.instruction))]
        prompts += [(f"+ {args.demos} examples, seed {s}",
                     TextPrompt(instruction=task.instruction, demos=random.Random(s).sample(list(task.train), args.demos)))
                    for s in args.seeds]
        for label, p in prompts:
            em = evaluate(lm, task, p, split="dev", progress=False).accuracy
            lp = reference_logprob(lm, task, p, task.dev)
            print(f"| {name} | {label} | {100 * em:.1f} | {lp:.2f} |", flush=True)


if __name__ == "__main__":
    main()
