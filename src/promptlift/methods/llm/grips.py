"""GrIPS: Prasad et al. 2023, "GrIPS: Gradient-free, Edit-based Instruction Search for Prompting Large Language Models" (EACL 2023).

The instruction is split into phrases; each candidate applies random phrase-level
edits to the current instruction: delete a phrase, swap two phrases, paraphrase a
phrase (the optimizer model's one job, with the simplest request there is), or add
back a phrase deleted earlier. The best candidate replaces the current instruction
if it scores better on dev; the search stops after `patience` steps without gain.
Delete, swap and add need no optimizer at all, so GrIPS works where the optimizer
cannot follow any format (use operations=del,swap,add).

Phrases here come from punctuation and a word limit, not from the paper's
constituency parser (no parser dependency); the edit operations are the paper's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ...engine.search import Candidate, SearchState
from ...registry import register
from .common import LLMConfig, LLMMethod, instruction_of, normalize, propose, tried, with_instruction

OPERATIONS = ("del", "swap", "par", "add")


def phrases(instruction: str, max_words: int = 5) -> list[str]:
    """The instruction's phrases: clauses between punctuation, long ones cut into chunks of `max_words` words."""
    out = []
    for clause in re.findall(r"[^,;:.!?]+[,;:.!?]*", instruction):
        words = clause.split()
        out += [" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words)]
    return out


def edit(method: LLMMethod, state: SearchState, parts: list[str], deleted: list[str], op: str):
    """Apply one edit to `parts` (a copy is returned) -> (parts, phrases deleted) or None if it cannot apply."""
    rng, parts = state.rng, list(parts)
    if op == "del" and parts:
        i = rng.randrange(len(parts))
        return parts[:i] + parts[i + 1 :], [parts[i]]
    if op == "swap" and len(parts) >= 2:
        i, j = rng.sample(range(len(parts)), 2)
        parts[i], parts[j] = parts[j], parts[i]
        return parts, []
    if op == "add" and deleted:
        parts.insert(rng.randrange(len(parts) + 1), rng.choice(deleted))
        return parts, []
    if op == "par" and parts:
        i = rng.randrange(len(parts))
        c = method.config
        new = propose(state, "paraphrase", {"instruction": parts[i]}, n=1, temperature=c.temperature,
                      fmt=c.proposer_format, seen=[parts[i]], max_chars=200)
        if not new:
            return None
        parts[i] = new[0]
        return parts, []
    return None


@register("grips")
class GrIPS(LLMMethod):
    """Phrase-level delete / swap / paraphrase / add edits, greedy with patience."""

    smoke = {"steps": 2, "candidates": 2, "dev_examples": 8}

    @dataclass
    class Config(LLMConfig):
        steps: int = field(default=6, metadata={"help": "edit rounds"})
        patience: int = field(default=2, metadata={"help": "stop after this many rounds without a better instruction"})
        temperature: float = field(default=0.7, metadata={"help": "sampling temperature of the paraphrases"})
        candidates: int = field(default=4, metadata={"help": "edited candidates per round"})
        edits: int = field(default=1, metadata={"help": "edits combined in one candidate"})
        operations: str = field(default="del,swap,par,add", metadata={
            "help": "edit operations to draw from (del, swap, par, add); without par no optimizer is used"})
        max_words: int = field(default=5, metadata={"help": "longest phrase, in words"})

        def __post_init__(self):
            super().__post_init__()
            ops = [o.strip() for o in self.operations.split(",") if o.strip()]
            bad = sorted(set(ops) - set(OPERATIONS))
            if not ops or bad:
                raise ValueError(f"operations must be a comma-separated subset of {', '.join(OPERATIONS)}, "
                                 f"got {self.operations!r}")
            if self.candidates < 1 or self.edits < 1 or self.max_words < 1:
                raise ValueError("candidates, edits and max_words must be >= 1")

    def ops(self) -> list[str]:
        return [o.strip() for o in self.config.operations.split(",") if o.strip()]

    def propose(self, state):
        c = self.config
        key = state.data["current"]
        base = state.prompts[key]
        start = phrases(instruction_of(base), c.max_words)
        known = {normalize(t) for t in tried(state)}
        out, pending = [], {}
        for _ in range(c.candidates):
            parts, deleted, used = start, [], []
            for _ in range(c.edits):
                # an operation that cannot apply here (add with nothing deleted, swap of one phrase) is redrawn
                options = list(self.ops())
                while options:
                    op = state.rng.choice(options)
                    res = edit(self, state, parts, state.data["deleted"], op)
                    if res is not None:
                        parts, gone = res
                        deleted += gone
                        used.append(op)
                        break
                    options.remove(op)
            text = " ".join(parts)
            if not used or normalize(text) in known:
                state.skip("duplicate" if used else "no-edit")
                continue
            known.add(normalize(text))
            cand = Candidate(with_instruction(base, text), origin="edit:" + "+".join(used), parent=key)
            pending[cand.prompt.hash] = deleted
            out.append(cand)
        state.data["pending"] = pending
        return out

    def update(self, state, scored):
        if "current" not in state.data:  # the starting instruction
            state.data.update(current=scored[0].key, deleted=[], pending={})
            return
        top = scored[0]
        if top.n >= len(state.dev) and state.beats(top.key, state.data["current"]):
            state.data["deleted"] += state.data["pending"].get(top.key, [])
            state.data["current"] = top.key
        state.data["pending"] = {}

    def optimizer_calls_per_step(self) -> int:
        c = self.config
        return c.candidates * c.edits if "par" in self.ops() else 0

    def per_step(self, state):
        return self.config.candidates, 0
