"""OPRO: Yang et al. 2024, "Large Language Models as Optimizers" (ICLR 2024).

The meta-prompt holds the optimization trajectory, the best instructions so far with
their scores sorted from lowest to highest (the best last, closest to where the
optimizer writes), and a few task exemplars. Each step samples several new
instructions at temperature 1, scores them, and adds them to the trajectory, which
keeps the top `trajectory` entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...engine.search import Candidate
from ...registry import register
from .common import LLMConfig, LLMMethod, format_pairs, instruction_of, propose, sample, short, tried, with_instruction


def sorted_trajectory(entries: list, size: int) -> list:
    """The `size` best [instruction, score] entries, sorted by score ascending (ties: older first)."""
    indexed = sorted(enumerate(entries), key=lambda t: (-t[1][1], t[0]))[:size]
    return [e for _, e in sorted(indexed, key=lambda t: (t[1][1], t[0]))]


@register("opro")
class OPRO(LLMMethod):
    """A trajectory of (instruction, score) pairs, sorted by score, drives new proposals."""

    smoke = {"steps": 2, "proposals": 2, "exemplars": 2, "dev_examples": 8}

    @dataclass
    class Config(LLMConfig):
        steps: int = field(default=4, metadata={"help": "optimization steps"})
        proposals: int = field(default=4, metadata={"help": "instructions sampled per step"})
        trajectory: int = field(default=10, metadata={"help": "best (instruction, score) pairs kept in the meta-prompt"})
        exemplars: int = field(default=3, metadata={"help": "task examples shown in the meta-prompt"})

        def __post_init__(self):
            super().__post_init__()
            if self.proposals < 1 or self.trajectory < 1 or self.exemplars < 0:
                raise ValueError("proposals and trajectory must be >= 1, exemplars >= 0")

    def propose(self, state):
        c = self.config
        traj = state.data.get("trajectory", [])
        text = "\n\n".join(f"Instruction: {short(ins)}\nScore: {round(100 * s)}" for ins, s in traj)
        exemplars = sample(state.rng, state.train or state.dev, c.exemplars)
        base = state.prompts[state.data["base"]]
        return [Candidate(with_instruction(base, t), origin="opro")
                for t in propose(state, "opro", {"trajectory": text, "examples": format_pairs(state.task, exemplars)},
                                 n=c.proposals, temperature=c.temperature, fmt=c.proposer_format, seen=tried(state))]

    def update(self, state, scored):
        state.data.setdefault("base", scored[0].key if scored else None)
        entries = state.data.get("trajectory", []) + [[instruction_of(r.prompt), r.score] for r in scored]
        state.data["trajectory"] = sorted_trajectory(entries, self.config.trajectory)

    def optimizer_calls_per_step(self) -> int:
        return self.config.proposals
