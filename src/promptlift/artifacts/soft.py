"""Soft artifacts: `SoftPrompt` (input vectors), `PrefixPrompt` (per-layer keys/values) and
`LatePrompt` (vectors that enter at an intermediate layer).

Saved as `prompt.json` (metadata, sha256) + `prompt.safetensors` (the tensors).
They apply only to the model they were trained on (same id, hidden size, layers).

Where the vectors go (`position`):
    "after_header" (default): [chat header][soft][instruction][input] — the header's
        cache is shared by the whole run and the soft tokens sit inside the user turn;
    "prepend": [soft][chat header][...] — PEFT's placement.
A SoftPrompt may split its vectors around the instruction (`split` = how many go
before it; the rest follow it), as P-tuning's anchors do.

`demos` are demonstrations after the instruction (earlier user/assistant turns,
as a `TextPrompt`'s): a gradient-free search (BBT, BBTv2) can start from a
few-shot prompt and keep its examples. They are part of the constant body, so
they are cached once with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..task import Example
from .base import Prompt, register_type

POSITIONS = ("after_header", "prepend")


def _empty(*shape):
    def make():
        import torch

        return torch.zeros(*shape)

    return make


@dataclass
class _Tensors(Prompt):
    instruction: str = ""
    position: str = "after_header"
    hidden_size: int = 0
    num_layers: int = 0
    demos: list[Example] = field(default_factory=list, metadata={"kind": "examples"})

    def __post_init__(self):
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {', '.join(POSITIONS)}, got {self.position!r}")


@register_type
@dataclass
class SoftPrompt(_Tensors):
    """k trained input vectors. embeds: (k, hidden); the first `split` go before the instruction (-1: all)."""

    type: ClassVar[str] = "soft"
    embeds: Any = field(default_factory=_empty(0, 0), metadata={"kind": "tensor"})
    split: int = -1


@register_type
@dataclass
class PrefixPrompt(_Tensors):
    """Per-layer key/value prefixes. keys, values: (layers, kv_heads, k, head_dim)."""

    type: ClassVar[str] = "prefix"
    keys: Any = field(default_factory=_empty(0), metadata={"kind": "tensor"})
    values: Any = field(default_factory=_empty(0), metadata={"kind": "tensor"})


@register_type
@dataclass
class LatePrompt(_Tensors):
    """k trained vectors that replace, at the input of decoder layer `layer`, the hidden states of k placeholder
    tokens (late prompt tuning). embeds: (k, hidden); ids: the k placeholder token ids the layers below read.

    Layout as a SoftPrompt's with all vectors before the instruction; layer 0 is an ordinary SoftPrompt.
    """

    type: ClassVar[str] = "late"
    embeds: Any = field(default_factory=_empty(0, 0), metadata={"kind": "tensor"})
    layer: int = 0
    ids: list[int] = field(default_factory=list)

    def __post_init__(self):
        super().__post_init__()
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in self.ids):
            raise ValueError("ids must be non-negative integers")
        if getattr(self.embeds, "ndim", 0) != 2:
            raise ValueError(f"embeds must be a (k, hidden) tensor, got shape {list(getattr(self.embeds, 'shape', []))}")
        if len(self.ids) != self.embeds.shape[0]:
            raise ValueError(f"{len(self.ids)} placeholder ids for {self.embeds.shape[0]} vectors")
