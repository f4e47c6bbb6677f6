"""Artifacts that wrap another prompt and change how it is used, whatever that prompt is.

- `Calibrated`: contextual calibration of label scores (Zhao et al. 2021,
  "Calibrate Before Use: Improving Few-Shot Performance of Language Models").
- `Reasoning`: two-stage chain of thought (Kojima et al. 2022, "Large Language
  Models are Zero-Shot Reasoners"): the answer opens with a trigger, the model
  reasons, then `answer_trigger` is appended and the short answer is read.
  With `followups`, each further trigger opens one more generation before the
  answer: least-to-most prompting (Zhou et al. 2023, "Least-to-Most Prompting
  Enables Complex Reasoning in Large Language Models") is a `Reasoning` whose
  trigger asks for the simpler sub-questions and whose one follow-up solves them
  in order (`least_to_most`).

Both wrap any artifact (text, kNN, soft, prefix): a calibrated soft prompt is a
`Calibrated(inner=SoftPrompt(...))`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .base import Prompt, register_type
from .text import TextPrompt

CONTENT_FREE = ["N/A", "", "[MASK]"]  # Zhao et al. 2021

# Least-to-most as zero-shot triggers: decompose, then solve the sub-questions in order, then answer.
# (The paper decomposes and solves with few-shot exemplars; these triggers are its zero-shot form.)
DECOMPOSE = "To answer this, we first need to answer these simpler questions:"
SOLVE = "Answering them one at a time, from the simplest:"


@register_type
@dataclass
class Calibrated(Prompt):
    """`inner`, with label scores divided by those of content-free inputs (classification)."""

    type: ClassVar[str] = "calibrated"
    inner: Prompt = field(default_factory=TextPrompt, metadata={"kind": "prompt"})
    content_free: list = field(default_factory=lambda: list(CONTENT_FREE))

    def __post_init__(self):
        if not self.content_free:
            raise ValueError("content_free needs at least one input")


@register_type
@dataclass
class Reasoning(Prompt):
    """`inner`, answered in stages: reason after `trigger` (then after each of `followups`, each opening one more
    generation of up to `reasoning_tokens`), then answer after `answer_trigger`.

    followups: further triggers, empty for chain of thought. Marked `omit_default`: the serialiser is to leave
      it out of the JSON while empty, so a chain-of-thought artifact saved before the field existed keeps its
      content hash (needs `artifacts.base.to_json` to honour the mark).
    """

    type: ClassVar[str] = "reasoning"
    demos_are_labels: ClassVar[bool] = False  # its demonstrations answer with their reasoning
    inner: Prompt = field(default_factory=TextPrompt, metadata={"kind": "prompt"})
    trigger: str = "Let's think step by step."
    answer_trigger: str = "Therefore, the answer is"
    reasoning_tokens: int = 96
    followups: list[str] = field(default_factory=list, metadata={"omit_default": True})

    def __post_init__(self):
        if not self.trigger.strip():
            raise ValueError("trigger must not be empty")
        if self.reasoning_tokens < 1:
            raise ValueError("reasoning_tokens must be >= 1")
        if not isinstance(self.followups, list) or not all(isinstance(t, str) and t.strip() for t in self.followups):
            raise ValueError("followups must be a list of non-empty triggers")


def least_to_most(inner: Prompt, decompose: str = DECOMPOSE, solve: str = SOLVE, **kw) -> Reasoning:
    """Least-to-most prompting of `inner`: list the simpler sub-questions, answer them in order, then answer."""
    return Reasoning(inner=inner, trigger=decompose, followups=[solve], **kw)
