"""Zero-shot prompting: the task's instruction (or one you give), no demonstrations.

The reference point of every prompt-optimization paper (e.g. Brown et al. 2020,
"Language Models are Few-Shot Learners").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...artifacts import TextPrompt
from ...registry import register
from ..base import Method


@register("zero-shot")
class ZeroShot(Method):
    """The instruction alone."""

    family = "baseline"
    takes = ("text",)
    makes = "text"

    @dataclass
    class Config:
        instruction: str = field(default="", metadata={"help": "instruction text; empty = the task's default"})

    def fit(self, lm, task, ctx):
        return TextPrompt(instruction=self.config.instruction or task.instruction)
