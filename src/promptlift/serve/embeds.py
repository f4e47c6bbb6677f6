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

A classifier answers with its label: the spliced embeddings go to
`/v1/completions` with `max_tokens: 1, logprobs: 20` and `allowed_token_ids`
(the labels' first tokens), and the labels are ranked by the log-probability of
their first token among the first generated token's `top_logprobs`
(`engine.backends.first_token_scores`, the chat endpoint's ranking). vLLM gives
raw log-probabilities, so the generated token is the most likely label's first
token even where no label is among the 20 most likely tokens: it always wins
(`rank_labels`). Labels whose first tokens collide are refused at start-up.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Sequence

import torch

from ..artifacts import SoftPrompt
from ..engine.apply import label_words
from ..engine.backends import first_token_scores
from ..engine.evaluate import LabelAnswer
from ..engine.soft import check_tensor_prompt, tensor_layout, tensor_rows
from ..render import render
from ..template import answer_sep

TOP_LOGPROBS = 20  # first-token alternatives asked of vLLM when ranking labels (its default max_logprobs)


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


def label_targets(lm, prompt: SoftPrompt, task) -> list[str]:
    """Each label's words as the answer goes on after the prompt, in `task.labels` order: the text the local
    engine scores (`WhiteBox.label_scores`: the answer separator, then the words)."""
    return [answer_sep(lm, render(prompt.instruction, prompt.demos, "", task.labels)) + w for w in label_words(task)]


def first_token_ids(lm, targets: Sequence[str]) -> list[int]:
    """The token id each target begins with."""
    return [lm.encode(t)[0] for t in targets]


def check_first_tokens(lm, targets: Sequence[str], where: str) -> None:
    """Refuse labels that begin with the same token (`first_token_scores`'s one-line UnsupportedError)."""
    first_token_scores({lm.tokenizer.decode([i]): 0.0 for i in first_token_ids(lm, targets)}, targets, where)


def first_token_top(choice: dict) -> dict[str, float]:
    """{token text: log-prob} of a /v1/completions choice's first token: its `top_logprobs` no more likely than the
    generated token (a label's, where `allowed_token_ids` held it to them: no label is more likely), and itself."""
    lp = choice.get("logprobs") if isinstance(choice, dict) else None
    if not isinstance(lp, dict):
        return {}
    out: dict[str, float] = {}
    tops, toks, vals = lp.get("top_logprobs") or [], lp.get("tokens") or [], lp.get("token_logprobs") or []
    pairs = list(tops[0].items()) if isinstance(tops, list) and tops and isinstance(tops[0], dict) else []
    if isinstance(toks, list) and isinstance(vals, list) and toks and isinstance(vals[0], (int, float)):
        pairs = [(t, v) for t, v in pairs if isinstance(v, (int, float)) and v <= vals[0]] + [(toks[0], vals[0])]
    for tok, v in pairs:
        if isinstance(tok, str) and isinstance(v, (int, float)):
            out[tok] = max(float(v), out.get(tok, float("-inf")))
    return out


def rank_labels(top: dict[str, float], targets: Sequence[str], task, where: str = "") -> LabelAnswer:
    """The label whose first token is most likely among `top`, with every label's score."""
    scores = first_token_scores(top, targets, where)
    names = task.label_names
    return LabelAnswer(names[max(range(len(names)), key=scores.__getitem__)], dict(zip(names, scores)))


def encode_embeds(t: torch.Tensor) -> str:
    """base64 of `torch.save(t)`: the `prompt_embeds` value vLLM reads."""
    buf = io.BytesIO()
    torch.save(t, buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_embeds(b64: str) -> torch.Tensor:
    """Inverse of `encode_embeds` (tensors only: `weights_only=True`)."""
    return torch.load(io.BytesIO(base64.b64decode(b64)), weights_only=True)


__all__ = ["soft_input_embeds", "encode_embeds", "decode_embeds", "label_targets", "first_token_ids", "check_first_tokens",
           "first_token_top", "rank_labels", "TOP_LOGPROBS"]
