"""Artifacts that wrap another prompt and change how it is used, whatever that prompt is.

- `Calibrated`: contextual calibration of label scores (Zhao et al. 2021,
  "Calibrate Before Use: Improving Few-Shot Performance of Language Models").
- `Reasoning`: two-stage chain of thought (Kojima et al. 2022, "Large Language
  Models are Zero-Shot Reasoners"): the answer opens with a trigger, the model
  reasons, then `answer_trigger` is appended and the short answer is read.

Both wrap any artifact (text, kNN, soft, prefix): a calibrated soft prompt is a
`Calibrated(inner=SoftPrompt(...))`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .base import Prompt, register_type
from .text import TextPrompt

CONTENT_FREE = ["N/A", "", "[MASK]"]  # Zhao et al. 2021


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
    """`inner`, answered in two stages: reason after `trigger`, then answer after `answer_trigger`."""

    type: ClassVar[str] = "reasoning"
    inner: Prompt = field(default_factory=TextPrompt, metadata={"kind": "prompt"})
    trigger: str = "Let's think step by step."
    answer_trigger: str = "Therefore, the answer is"
    reasoning_tokens: int = 96

    def __post_init__(self):
        if not self.trigger.strip():
            raise ValueError("trigger must not be empty")
        if self.reasoning_tokens < 1:
            raise ValueError("reasoning_tokens must be >= 1")
