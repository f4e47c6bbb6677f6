"""Text artifacts: portable to any model and any endpoint.

- `TextPrompt`: an instruction and fixed demonstrations.
- `KnnPrompt`: an instruction and, per input, its k nearest demonstrations from a pool
  (Liu et al. 2022, "What Makes Good In-Context Examples for GPT-3?").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..task import Example
from .base import Prompt, register_type

EMBEDDERS = ("model", "tfidf")


@register_type
@dataclass
class TextPrompt(Prompt):
    """An instruction (at the start of the first user turn) and demonstrations (earlier turns)."""

    type: ClassVar[str] = "text"
    instruction: str = ""
    demos: list[Example] = field(default_factory=list, metadata={"kind": "examples"})


@register_type
@dataclass
class KnnPrompt(Prompt):
    """Demonstrations chosen per input: its `k` nearest neighbours in `pool`.

    embedder: "model" = mean-pooled last hidden states of the (local) model the
      prompt is applied to; "tfidf" = TF-IDF cosine over words, which works on any
      endpoint and needs no model.
    """

    type: ClassVar[str] = "knn"
    instruction: str = ""
    pool: list[Example] = field(default_factory=list, metadata={"kind": "examples"})
    k: int = 4
    embedder: str = "model"

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.embedder not in EMBEDDERS:
            raise ValueError(f"embedder must be one of {', '.join(EMBEDDERS)}, got {self.embedder!r}")
