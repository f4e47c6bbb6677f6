"""Iterative APE: Zhou et al. 2023, "Large Language Models Are Human-Level Prompt Engineers" (ICLR 2023), Sec. 3.2.

After APE's induction step, iterative Monte-Carlo search: each further step asks the
optimizer for variations of the best instructions so far ("Generate a variation of
the following instruction while keeping the semantic meaning") and scores them
together with those instructions; the best overall is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...engine.search import Candidate
from ...registry import register
from .ape import APE
from .common import instruction_of, propose, tried, with_instruction


@register("ape-iterative")
class APEIterative(APE):
    """APE, then rounds of variations of the current best instructions."""

    smoke = {"subsets": 2, "samples_per_subset": 1, "pairs": 2, "steps": 2, "top": 1, "variations": 1,
             "dev_examples": 8}

    @dataclass
    class Config(APE.Config):
        steps: int = field(default=3, metadata={"help": "search steps: induction, then resampling rounds"})
        top: int = field(default=2, metadata={"help": "best instructions resampled each round"})
        variations: int = field(default=2, metadata={"help": "variations sampled per instruction per round"})

        def __post_init__(self):
            super().__post_init__()
            if self.top < 1 or self.variations < 1:
                raise ValueError("top and variations must be >= 1")

    def propose(self, state):
        if state.step == 1:
            return super().propose(state)
        c = self.config
        out: list[Candidate] = []
        for key, _ in state.ranking()[: c.top]:
            parent = state.prompts[key]
            out.append(Candidate(parent, origin="incumbent"))  # scored already: free, and wins ties
            seen = tried(state) + [instruction_of(x.prompt) for x in out]
            for text in propose(state, "paraphrase", {"instruction": instruction_of(parent)}, n=c.variations,
                                temperature=c.temperature, fmt=c.proposer_format, seen=seen):
                out.append(Candidate(with_instruction(parent, text), origin="resample", parent=key))
        return out

    def estimate(self, state):
        c = self.config
        first, rest = c.subsets * c.samples_per_subset, c.top * c.variations
        steps_after = max(0, c.steps - 1)
        return {"target_calls": self.initial_calls(state) + self.selection_calls(state, first)
                + steps_after * self.selection_calls(state, rest + c.top),
                "optimizer_calls": first + steps_after * rest}
