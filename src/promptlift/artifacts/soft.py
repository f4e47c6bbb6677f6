"""Soft artifacts: `SoftPrompt` (input vectors) and `PrefixPrompt` (per-layer keys/values).

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
