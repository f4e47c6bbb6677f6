"""The one decoding loop (greedy or sampled) from a cached prefix.

promptlift decodes with its own loop instead of `model.generate`, so soft
prompts, prefix key/values and any transformers cache class behave the same
in generation as in scoring.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..kv import KV
from .base import GenerationConfig
from .budget import ledger_of
from .scoring import pad_id_of, pad_rows


def _sample(logits: torch.Tensor, cfg: GenerationConfig, gen: torch.Generator) -> torch.Tensor:
    """(R, vocab) -> (R,) next tokens."""
    if cfg.temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sp, si = probs.sort(-1, descending=True)
        keep = sp.cumsum(-1) - sp < cfg.top_p
        sp = sp * keep
        probs = torch.zeros_like(probs).scatter(-1, si, sp)
    # the generator lives on the CPU, so sampling is seeded the same way on every device
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(1).to(logits.device)


@torch.no_grad()
def decode(lm, prefix: KV | None, rows: Sequence[Sequence[int]], cfg: GenerationConfig,
           row_embeds: torch.Tensor | None = None) -> list[list[str]]:
    """Continue each row after `prefix`; return `cfg.n` strings per row.

    Stops a row at an end-of-turn/eos token, at any of `cfg.stop` (the stop text
    is cut off), or after `cfg.max_tokens` tokens.
    """
    n = max(1, cfg.n)
    rows_n = [list(r) for r in rows for _ in range(n)]
    R = len(rows_n)
    dev = lm.device
    gen = torch.Generator(device="cpu").manual_seed(0 if cfg.seed is None else int(cfg.seed))
    ids, mask = pad_rows(rows_n, pad_id_of(lm), dev)
    lens = mask.sum(1)
    embeds = row_embeds.repeat_interleave(n, 0) if row_embeds is not None else None
    if embeds is not None:
        hidden, kv = lm.forward(embeds=embeds, mask=mask, past=prefix)
    else:
        hidden, kv = lm.forward(ids=ids, mask=mask, past=prefix)
    last = hidden[torch.arange(R, device=dev), lens - 1]  # (R, hidden)
    out: list[list[int]] = [[] for _ in range(R)]
    texts = [""] * R
    active = torch.arange(R, device=dev)  # rows still generating
    for _ in range(cfg.max_tokens):
        nxt = _sample(lm.logits(last), cfg, gen)  # (A,)
        keep = []
        for a, tok in zip(active.tolist(), nxt.tolist()):
            if tok in lm.eos_ids:
                continue
            out[a].append(tok)
            texts[a] = lm.tokenizer.decode(out[a], skip_special_tokens=True)
            if any(s and s in texts[a] for s in cfg.stop):
                continue
            keep.append(a)
        ledger_of(lm).charge(completion_tokens=len(active))
        if not keep:
            break
        keep_set = set(keep)
        pos = [i for i, a in enumerate(active.tolist()) if a in keep_set]
        sel = torch.tensor(pos, device=dev)
        active = torch.tensor(keep, device=dev)
        step_ids = nxt.index_select(0, sel).unsqueeze(1)  # (A', 1)
        h, kv = lm.forward(ids=step_ids, past=kv.select(sel))
        last = h[:, -1]
    result = []
    for t in texts:
        for s in cfg.stop:
            if s and s in t:
                t = t[: t.index(s)]
        result.append(t.strip())
    return [result[i * n : (i + 1) * n] for i in range(len(rows))]
