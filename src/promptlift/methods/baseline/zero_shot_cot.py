"""Zero-shot chain of thought: Kojima et al. 2022, "Large Language Models are Zero-Shot Reasoners".

The answer opens with "Let's think step by step."; the model writes its
reasoning, then a second pass appends "Therefore, the answer is" and reads the
short answer. For generation tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...artifacts import Reasoning, TextPrompt
from ...registry import register
from ..base import Method


@register("zero-shot-cot")
class ZeroShotCoT(Method):
    """Instruction + reasoning trigger, two-stage answer extraction."""

    family = "baseline"
    task_kinds = ("generation",)

    @dataclass
    class Config:
        instruction: str = field(default="", metadata={"help": "instruction text; empty = the task's default"})
        trigger: str = field(default="Let's think step by step.", metadata={"help": "reasoning trigger"})

    def fit(self, lm, task, ctx):
        return Reasoning(inner=TextPrompt(instruction=self.config.instruction or task.instruction),
                         trigger=self.config.trigger)
