"""Contextual calibration: Zhao et al. 2021, "Calibrate Before Use: Improving Few-Shot Performance of Language Models".

Small models prefer some labels whatever the input. Scoring content-free inputs
("N/A", "", "[MASK]") under the same prompt estimates that bias p_cf, and each
prediction is rescored as log p(label | x) - log p_cf(label). Works with
zero-shot (shots=0) or few-shot prompts; classification only. As a later stage of a
pipeline (`--method ape+prompt-tuning+calibrated`) it wraps the stage before's artifact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...artifacts import Calibrated as CalibratedPrompt, TextPrompt
from ...registry import register
from ..base import Method
from ..shared import balanced_sample


@register("calibrated")
class Calibrated(Method):
    """Zero- or few-shot prompt with contextual calibration."""

    family = "baseline"
    smoke = {"shots": 1}
    task_kinds = ("classification",)
    takes = ("*",)  # in a pipeline it calibrates the stage before's artifact, whatever its type
    makes = "calibrated"

    @dataclass
    class Config:
        shots: int = field(default=0, metadata={"help": "demonstrations (0 = zero-shot)"})
        instruction: str = field(default="", metadata={"help": "instruction text; empty = the task's default"})

    def fit(self, lm, task, ctx):
        if ctx.start is not None:
            return CalibratedPrompt(inner=ctx.start)
        demos = balanced_sample(task, self.config.shots, ctx.rng()) if self.config.shots else []
        return CalibratedPrompt(inner=TextPrompt(instruction=self.config.instruction or task.instruction, demos=demos))
