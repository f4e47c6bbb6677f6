"""ABO, after Ma et al. 2024, "Are Large Language Models Good Prompt Optimizers?" (arXiv 2402.02101): its
"Automatic Behavior Optimization" paradigm.

The paper finds that LLM optimizers rarely find the true cause of an error by
reflection, and that even a sound reflection often gives a prompt the target
model does not follow. Instead of rewriting a whole instruction, ABO optimizes
the target's behaviour directly: the prompt is a list of steps, each with a
demonstration of following it, and a wrong answer is corrected at the step where
the target went wrong. The paper describes the paradigm, not one algorithm; this
is our reading of it on the one search loop:

- **Plan** (while no step-by-step candidate exists): the optimizer writes the
  task as `plan_steps` short steps, one request per step (each sees the steps so
  far; of its `samples` answers the first usable one that repeats no earlier step
  is kept), then one demonstration per step: how the helper carries out that step
  on one training example whose correct output it is shown. `decompositions`
  plans are proposed and selected on dev like any candidate.
- **Refine** (every later step): the best step-by-step candidate on dev answers a
  training minibatch; for a wrong answer the optimizer reads the steps, the input,
  the target's answer and the correct one, and names the step that was not
  followed (a number after a fixed prefix). Only that step is rewritten
  (`proposals` samples), each with a new demonstration on the failing example.
- **Behaviour check**: a rewrite is kept only if the target now answers the
  failing example better and does no worse on the minibatch; one the target does
  not follow is skipped (`no-minibatch-gain`) and never scored on dev.

The artifact is a `TextPrompt` (inside the run's wrappers): the starting
instruction, then the numbered steps, each followed by its demonstration, e.g.

    Classify the sentiment.

    Step 1: Find the words that show an opinion.
    Example: In "a gripping, funny film" they are "gripping" and "funny".
    Step 2: ...

The plan of every step-by-step candidate (its steps and demonstrations) is kept in
the search state, so refining never parses the prompt text back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ...engine.search import Candidate, SearchState
from ...registry import register
from ...task import Example
from .common import (LLMConfig, LLMMethod, answer, error_pool, format_pairs, instruction_of, meta_prompt, propose, request,
                     sample, short, start_key, with_instruction)
from .reflect import next_minibatch

_NUMBERS = {w: i + 1 for i, w in enumerate(["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])}


# --- plans: steps with their demonstrations, as the target reads them ----------------------------
def render_plan(intro: str, plan: list[list[str]]) -> str:
    """The prompt's instruction: `intro`, a blank line, then "Step k: ..." each with its "Example: ..." line."""
    lines = []
    for k, (step, demo) in enumerate(plan, 1):
        lines.append(f"Step {k}: {step}")
        if demo:
            lines.append(f"Example: {demo}")
    body = "\n".join(lines)
    return f"{intro}\n\n{body}" if intro else body


def step_number(raw: str, n_steps: int) -> int | None:
    """The 0-based step an answer opens with ("2", " 2.", "two", "Step 3"), or None if it names none of 1..n_steps."""
    m = re.match(r"\s*(?:step\s*)?(\d+|" + "|".join(_NUMBERS) + r")\b", raw.lower())
    if not m:
        return None
    k = int(m.group(1)) if m.group(1).isdigit() else _NUMBERS[m.group(1)]
    return k - 1 if 1 <= k <= n_steps else None


@register("abo")
class ABO(LLMMethod):
    """Step-by-step prompt with a demonstration per step; refined only at the step the target failed to follow."""

    smoke = {"steps": 2, "plan_steps": 2, "decompositions": 1, "samples": 1, "proposals": 1, "minibatch": 3,
             "tries": 1, "dev_examples": 8}

    @dataclass
    class Config(LLMConfig):
        steps: int = field(default=4, metadata={"help": "search steps: the first writes plans, the others refine"})
        temperature: float = field(default=0.7, metadata={"help": "sampling temperature of the optimizer model"})
        plan_steps: int = field(default=3, metadata={"help": "steps in a written plan"})
        decompositions: int = field(default=2, metadata={"help": "plans written (and compared on dev) at the start"})
        pairs: int = field(default=3, metadata={"help": "input-output pairs shown when a plan is written"})
        samples: int = field(default=2, metadata={
            "help": "samples per plan-step and demonstration request; the first usable one is kept (a small "
                    "proposer often repeats the step before)"})
        proposals: int = field(default=2, metadata={"help": "rewrites of the failing step per refinement"})
        minibatch: int = field(default=4, metadata={"help": "training examples the plan answers per refinement"})
        tries: int = field(default=3, metadata={"help": "minibatches tried to find a wrong answer before giving up"})

        def __post_init__(self):
            super().__post_init__()
            for k in ("plan_steps", "decompositions", "pairs", "samples", "proposals", "minibatch", "tries"):
                if getattr(self, k) < 1:
                    raise ValueError(f"{k} must be >= 1")

    # --- the loop's questions -------------------------------------------------------------
    def propose(self, state):
        parent = self.parent(state)
        if parent is None:
            return self.write_plans(state)
        return self.refine(state, parent)

    def parent(self, state: SearchState) -> str | None:
        """The step-by-step candidate with the best dev score (None before one exists)."""
        plans = state.data.get("plans", {})
        return next((k for k, _ in state.ranking() if k in plans), None)

    # --- plan: steps, one request each, then a demonstration for each ---------------------------
    def write_plans(self, state: SearchState) -> list[Candidate]:
        c = self.config
        start = start_key(state)
        base = state.prompts[start]
        intro = instruction_of(base)
        pool = error_pool(state)
        out = []
        for _ in range(c.decompositions):
            pairs = sample(state.rng, pool, c.pairs)
            steps: list[str] = []
            for _ in range(c.plan_steps):
                so_far = "\n".join(f"Step {k}: {s}" for k, s in enumerate(steps, 1)) or "(none yet)"
                got = propose(state, "abo_step", {"instruction": intro or "(no instruction)",
                                                   "examples": format_pairs(state.task, pairs), "so_far": so_far},
                              n=c.samples, temperature=c.temperature, fmt=c.proposer_format, seen=steps)
                if not got:
                    break  # counted as skipped: the plan ends here
                steps.append(got[0])
            if not steps:
                continue
            plan = [[s, ""] for s in steps]
            for i in range(len(plan)):
                plan[i][1] = self.demonstrate(state, intro, plan, i, pairs[0])
            out.append(self.candidate(state, base, intro, plan, origin="plan", parent=start))
        return out

    def demonstrate(self, state: SearchState, intro: str, plan: list[list[str]], i: int, ex: Example) -> str:
        """A one-sentence demonstration of step `i` on example `ex` ("" if the optimizer's was unusable)."""
        c = self.config
        got = propose(state, "abo_demo", {"steps": render_plan(intro, plan), "step": plan[i][0],
                                          "input": short(ex.input), "output": answer(state.task, ex.output)},
                      n=c.samples, temperature=c.temperature, fmt=c.proposer_format, seen=[s for s, _ in plan])
        return got[0] if got else ""

    @staticmethod
    def candidate(state: SearchState, base, intro: str, plan: list[list[str]], origin: str, parent: str,
                  keep: bool = True) -> Candidate:
        """`base` with the plan as its instruction; `keep`: remember the plan (refinements start from it)."""
        prompt = with_instruction(base, render_plan(intro, plan))
        if keep:
            state.data.setdefault("plans", {}).setdefault(prompt.hash, {"intro": intro, "plan": plan})
        return Candidate(prompt, origin=origin, parent=parent)

    # --- refine: the failing step only, kept if the target follows it ----------------------------
    def refine(self, state: SearchState, parent: str) -> list[Candidate]:
        c = self.config
        prompt = state.prompts[parent]
        intro, plan = state.data["plans"][parent]["intro"], state.data["plans"][parent]["plan"]
        for _ in range(c.tries):
            batch = next_minibatch(state, c.minibatch)
            records = state.score(prompt, batch)
            wrong = [j for j, r in enumerate(records) if r["score"] < 1]
            if wrong:
                break
        else:
            state.skip("no-failures")
            return []
        j = wrong[0]
        rec = records[j]
        i = self.locate(state, intro, plan, rec)
        state.data["located"] = {"parent": parent, "input": rec["input"], "step": i}
        if i is None:
            return []
        texts = propose(state, "abo_rewrite", {"steps": render_plan(intro, plan), "step": plan[i][0],
                                               **self.error_fields(state, rec)},
                        n=c.proposals, temperature=c.temperature, fmt=c.proposer_format, seen=[s for s, _ in plan])
        failing = Example(rec["input"], rec["gold"])
        out = []
        for text in texts:
            new = [list(p) for p in plan]
            new[i] = [text, ""]
            new[i][1] = self.demonstrate(state, intro, new, i, failing)
            child = self.candidate(state, prompt, intro, new, origin=f"step{i + 1}", parent=parent, keep=False)
            got = state.score(child.prompt, batch)
            # the behaviour check: the target follows the new step where it failed, and loses nothing else
            if got[j]["score"] > rec["score"] and sum(r["score"] for r in got) >= sum(r["score"] for r in records):
                out.append(self.candidate(state, prompt, intro, new, origin=f"step{i + 1}", parent=parent))
            else:
                state.skip("no-minibatch-gain")
        return out

    def locate(self, state: SearchState, intro: str, plan: list[list[str]], rec: dict) -> int | None:
        """The step the optimizer says the target did not follow (0-based; one optimizer call), or None."""
        if len(plan) == 1:
            return 0
        t = meta_prompt("abo_locate")
        req = request(state.optimizer, t.fill(steps=render_plan(intro, plan), **self.error_fields(state, rec)),
                      t.prefix, self.config.proposer_format, t.sep)
        raws = state.ask(req, n=1, temperature=0.0, max_tokens=6, stop=["\n"])
        i = step_number(raws[0], len(plan)) if raws else None
        if i is None:
            state.skip("unusable")
        return i

    @staticmethod
    def error_fields(state: SearchState, rec: dict) -> dict:
        return {"input": short(rec["input"]), "pred": answer(state.task, rec["pred"]),
                "gold": answer(state.task, rec["gold"])}

    # --- estimates ------------------------------------------------------------------------
    def optimizer_calls_per_step(self) -> int:
        c = self.config
        return max(c.decompositions * 2 * c.plan_steps * c.samples, 1 + c.proposals * (1 + c.samples))

    def per_step(self, state):
        c = self.config
        return max(c.decompositions, c.proposals), (c.tries + c.proposals) * c.minibatch
