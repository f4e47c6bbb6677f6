"""APE: Zhou et al. 2023, "Large Language Models Are Human-Level Prompt Engineers" (ICLR 2023).

Instruction induction: the optimizer sees a few input-output pairs and completes
"The instruction was to ..."; each sample, on its own subset of training pairs, is
a candidate instruction. Candidates are scored on the dev set with successive
halving by default (APE's adaptive filtering: many candidates on few examples,
the better ones on more) and the best is kept. One step; `ape-iterative` searches
around the best afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...engine.search import Candidate, SearchState
from ...registry import register
from .common import (LLMConfig, LLMMethod, as_instruction, format_pairs, instruction_of, propose, sample,
                     start_key, tried, with_instruction)


def induce(method: LLMMethod, state: SearchState, base) -> list[Candidate]:
    """APE's forward generation: `subsets` requests, each on its own random training pairs."""
    c = method.config
    out = []
    pool = state.train or state.dev
    for _ in range(c.subsets):
        pairs = sample(state.rng, pool, c.pairs)
        for text in propose(state, "ape_induce", {"examples": format_pairs(state.task, pairs)},
                            n=c.samples_per_subset, temperature=c.temperature, fmt=c.proposer_format,
                            seen=tried(state) + [instruction_of(cand.prompt) for cand in out]):
            out.append(Candidate(with_instruction(base, as_instruction(text)), origin="induce"))
    return out


@register("ape")
class APE(LLMMethod):
    """Instructions induced from demonstrations, scored on dev (successive halving), best kept."""

    smoke = {"subsets": 2, "samples_per_subset": 1, "pairs": 2, "dev_examples": 8}

    @dataclass
    class Config(LLMConfig):
        steps: int = field(default=1, metadata={"help": "search steps (APE itself is one step)"})
        selection: str = field(default="halving", metadata={"help": "candidate selection: full | ucb | halving"})
        temperature: float = field(default=0.9, metadata={"help": "sampling temperature of the optimizer model"})
        subsets: int = field(default=4, metadata={"help": "induction requests, each on its own random pairs"})
        samples_per_subset: int = field(default=2, metadata={"help": "instructions sampled per request"})
        pairs: int = field(default=5, metadata={"help": "input-output pairs shown per induction request"})

        def __post_init__(self):
            super().__post_init__()
            if self.subsets < 1 or self.samples_per_subset < 1 or self.pairs < 1:
                raise ValueError("subsets, samples_per_subset and pairs must be >= 1")

    def propose(self, state):
        return induce(self, state, state.prompts[start_key(state)])

    def optimizer_calls_per_step(self) -> int:
        return self.config.subsets * self.config.samples_per_subset
