"""Least-to-most prompting: Zhou et al. 2023, "Least-to-Most Prompting Enables Complex Reasoning in Large Language
Models" (ICLR 2023).

The model first lists the simpler sub-questions the input needs ("To answer
this, we first need to answer these simpler questions:"), then answers them in
order, each answer able to use the ones before ("Answering them one at a time,
from the simplest:"), and a last pass appends "Therefore, the answer is" and
reads the short answer: three generations per input, each continuing the text
so far. The artifact is a `Reasoning` prompt with one follow-up trigger, so it
runs the same way on a local model and on an endpoint. The paper decomposes and
solves with few-shot exemplars of both; here the two stages are zero-shot
triggers (pass `decompose` and `solve` to change them). For generation tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...artifacts import TextPrompt
from ...artifacts.wrappers import DECOMPOSE, SOLVE, least_to_most
from ...registry import register
from ..base import Method


@register("least-to-most")
class LeastToMost(Method):
    """Instruction + decomposition trigger, then the sub-questions solved in order, then the answer."""

    family = "baseline"
    task_kinds = ("generation",)

    @dataclass
    class Config:
        instruction: str = field(default="", metadata={"help": "instruction text; empty = the task's default"})
        decompose: str = field(default=DECOMPOSE, metadata={"help": "trigger of the decomposition stage"})
        solve: str = field(default=SOLVE, metadata={"help": "trigger of the stage that answers the sub-questions"})
        reasoning_tokens: int = field(default=96, metadata={"help": "tokens each of the two stages may write"})

        def __post_init__(self):
            if not self.decompose.strip() or not self.solve.strip():
                raise ValueError("decompose and solve must be non-empty triggers")
            if self.reasoning_tokens < 1:
                raise ValueError("reasoning_tokens must be >= 1")

    def fit(self, lm, task, ctx):
        c = self.config
        return least_to_most(TextPrompt(instruction=c.instruction or task.instruction), c.decompose, c.solve,
                             reasoning_tokens=c.reasoning_tokens)
