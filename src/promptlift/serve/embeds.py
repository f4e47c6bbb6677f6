"""Soft prompts on vLLM: the request's input embeddings with the virtual tokens spliced in.

vLLM (started with `--enable-prompt-embeds`) takes, on `/v1/completions`, a
`prompt_embeds` field: base64 of a `torch.save`d `(num_tokens, hidden)` tensor,
the embeddings of the full, already chat-templated prompt. This module builds
that tensor so the model reads exactly what `promptlift.engine.soft.soft_prefix_kv`
gives it locally:

    position "after_header":  [header][soft[:s]][body][soft[s:]][input ...]
    position "prepend":       [soft[:s]][header][body][soft[s:]][input ...]

where header and body (instruction, demonstrations) come from
`promptlift.engine.soft.tensor_layout` and the
input tokens are the rest of the rendered request (`promptlift.render`), in the
model's dtype. Needs the model's tokenizer and input embeddings (a local
`HFModel` of the same model vLLM serves).
"""

from __future__ import annotations

import base64
import io
from typing import Any, Sequence

import torch

from ..artifacts import SoftPrompt
from ..engine.soft import check_tensor_prompt, tensor_layout, tensor_rows


@torch.no_grad()
def soft_input_embeds(lm, prompt: SoftPrompt, conversation: str | Sequence[Any], task=None) -> torch.Tensor:
    """(num_tokens, hidden) input embeddings of `conversation` under `prompt`, in the model's dtype, on CPU."""
    check_tensor_prompt(prompt, lm)
    labels = task.labels if task is not None and task.is_classification else None
    layout = tensor_layout(lm, prompt, labels)
    _, (row,) = tensor_rows(lm, prompt, layout, [conversation], labels)
    dev, dtype = lm.device, lm.dtype

    def emb(tokens: list[int]) -> torch.Tensor:
        return lm.embed(torch.tensor(tokens, dtype=torch.long, device=dev)).to(dtype)

    soft = prompt.embeds.to(dev, dtype)
    k = soft.shape[0]
    s = k if prompt.split < 0 else min(prompt.split, k)
    if prompt.position == "prepend":
        seq = [soft[:s], emb(layout.header), emb(layout.body), soft[s:], emb(row)]
    else:
        seq = [emb(layout.header), soft[:s], emb(layout.body), soft[s:], emb(row)]
    return torch.cat([t for t in seq if t.shape[0]], dim=0).cpu().contiguous()


def encode_embeds(t: torch.Tensor) -> str:
    """base64 of `torch.save(t)`: the `prompt_embeds` value vLLM reads."""
    buf = io.BytesIO()
    torch.save(t, buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_embeds(b64: str) -> torch.Tensor:
    """Inverse of `encode_embeds` (tensors only: `weights_only=True`)."""
    return torch.load(io.BytesIO(base64.b64decode(b64)), weights_only=True)


__all__ = ["soft_input_embeds", "encode_embeds", "decode_embeds"]
