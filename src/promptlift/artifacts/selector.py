"""`SelectorPrompt`: a pool of prompts and a small classifier that picks, per input, the one that answers it.

The prompt selector: one route for many tasks (the members come from different tasks; the classifier learned
from their own training splits which member serves an input), or a per-input choice within one task (it
learned which member answers each training input correctly). Members are artifacts of any type (text, soft,
token, mixture, ...), each carrying its task name and label words (`Prompt.task`, `Prompt.labels`).

    f(x) = features of the input (its last user message):
        "tfidf": TF-IDF over `vocab` with `idf` (data: works on any endpoint)
        "model": the local model's own mean-pooled embedding (`WhiteBox.embed_texts`), `dim` wide
    h = relu(w1 @ f + b1)            if w1 has rows (one hidden layer), else h = f   (linear)
    member(x) = argmax_k (w2 @ h + b2)_k

Everything is data: the vocabulary is a JSON list, the IDF and the weights are tensors saved beside the JSON,
so a save/load round trip is bit-exact and loading runs no code. Inference lives in `engine.selector`, the
`promptlift select` verb that trains it in `promptlift.selector`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..task import CLASSIFICATION, Task
from .base import Prompt, register_type
from .soft import _empty

FEATURES = ("tfidf", "model")


@register_type
@dataclass
class SelectorPrompt(Prompt):
    """members: K prompts; features: "tfidf" | "model"; dim: feature width D.

    vocab: D words and idf: (D,) for tfidf features (empty for model features);
    w1: (H, D), b1: (H,) the hidden layer, or (0, 0) / (0,) for a linear classifier; w2: (K, H or D), b2: (K,).
    """

    type: ClassVar[str] = "selector"
    members: list[Prompt] = field(default_factory=list, metadata={"kind": "prompts"})
    features: str = "tfidf"
    dim: int = 0
    vocab: list = field(default_factory=list)
    idf: Any = field(default_factory=_empty(0), metadata={"kind": "tensor"})
    w1: Any = field(default_factory=_empty(0, 0), metadata={"kind": "tensor"})
    b1: Any = field(default_factory=_empty(0), metadata={"kind": "tensor"})
    w2: Any = field(default_factory=_empty(0, 0), metadata={"kind": "tensor"})
    b2: Any = field(default_factory=_empty(0), metadata={"kind": "tensor"})

    def __post_init__(self):
        if not self.members:
            raise ValueError("a selector needs at least one member")
        if not all(isinstance(m, Prompt) for m in self.members):
            raise ValueError("members must be prompt artifacts")
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {', '.join(FEATURES)}, got {self.features!r}")
        k, d = len(self.members), self.dim
        if self.features == "tfidf" and (len(self.vocab) != d or tuple(self.idf.shape) != (d,)):
            raise ValueError(f"tfidf features need {d} vocabulary words and idf of shape ({d},)")
        hidden = self.w1.shape[0] if self.w1.numel() else 0
        if hidden and (tuple(self.w1.shape) != (hidden, d) or tuple(self.b1.shape) != (hidden,)):
            raise ValueError(f"w1 must have shape (hidden, {d}) and b1 (hidden,), got {tuple(self.w1.shape)}, "
                             f"{tuple(self.b1.shape)}")
        width = hidden or d
        if tuple(self.w2.shape) != (k, width) or tuple(self.b2.shape) != (k,):
            raise ValueError(f"w2 must have shape ({k}, {width}) and b2 ({k},) for {k} members, got "
                             f"{tuple(self.w2.shape)}, {tuple(self.b2.shape)}")

    @property
    def text_only(self) -> bool:
        """TF-IDF features over text members need no model: the selector goes to any endpoint."""
        return self.features == "tfidf" and all(m.text_only for m in self.members)

    def label_task(self) -> Task | None:
        """The members' one label set when they all share it (a selector within one task), else None: each chosen
        member answers with its own label words."""
        if self.labels:
            return Task(name=self.task or "prompt", kind=CLASSIFICATION, labels=dict(self.labels))
        tasks = [m.label_task() for m in self.members]
        if tasks[0] is not None and all(t is not None and t.labels == tasks[0].labels for t in tasks):
            return tasks[0]
        return None
