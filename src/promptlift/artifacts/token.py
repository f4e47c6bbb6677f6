"""Token prompts: a sequence of vocabulary tokens found by a search over one model's vocabulary.

`TokenPrompt` holds the token ids exactly as they were found, their decoded
text, and (in `model`, as every artifact does) the model whose tokenizer the
ids belong to. On that model the ids are applied as they are; on any other
model or endpoint the prompt is its `text`, used as an instruction. So a token
prompt travels where a soft prompt cannot.

A decoded text does not always re-encode to the same ids (BPE merges across
token boundaries, bytes that are not whole characters): `meta["reencodes"]`,
set by the method that made the prompt, says whether it does.

`demos` are demonstrations that follow the ids as earlier turns, as a text
prompt's follow its instruction: a token search can start from a few-shot
prompt and keep its examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..task import Example
from .base import Prompt, register_type


@register_type
@dataclass
class TokenPrompt(Prompt):
    """Token ids placed where a text prompt's instruction goes, and their decoded text.

    ids: token ids of the model in `model` (the found tokens, then any fixed instruction tokens).
    text: `ids` decoded; what another model or an endpoint reads as the instruction.
    demos: demonstrations after the ids (earlier user/assistant turns), as a `TextPrompt`'s.
    """

    type: ClassVar[str] = "token"
    ids: list[int] = field(default_factory=list)
    text: str = ""
    demos: list[Example] = field(default_factory=list, metadata={"kind": "examples"})

    def __post_init__(self):
        if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in self.ids):
            raise ValueError("ids must be non-negative integers")
