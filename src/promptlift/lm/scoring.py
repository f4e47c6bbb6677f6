"""The one scorer: log-probabilities of candidate continuations after a cached prefix.

Used for rank classification (every label's words), for training losses (the
gold continuation, with gradients), and by `HFModel.score`. It never computes
full-vocabulary logits at positions nobody scores.

Sequence layout of row b:  [prefix (shared, cached)] [rows[b]] [candidate tokens]
Pass 1 runs rows[b] on top of the prefix; the logits at its last real position
score every candidate's first token. Pass 2 (only for candidates of 2+ tokens)
runs those candidates' remaining tokens from row b's cache.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..kv import KV


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token rows -> ids (B, T) and mask (B, T)."""
    T = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), T), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def pad_id_of(lm) -> int:
    tok = lm.tokenizer
    for t in (tok.pad_token_id, tok.eos_token_id, 0):
        if t is not None:
            return int(t)
    return 0


def score_candidates(lm, prefix: KV | None, rows: Sequence[Sequence[int]],
                     cands: Sequence[Sequence[Sequence[int]]], *, max_rows_per_pass: int = 64,
                     row_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Total log-probability of each candidate continuation.

    prefix: cached constant prefix, batch 1 (shared) or batch B, or None.
    rows: B token lists, each at least 1 token (what follows the prefix).
    cands: for each row, its candidate continuations (token lists, each >= 1 token).
    row_embeds: optional (B, T, hidden) embeddings to use instead of `rows`' token
      embeddings (rows still give the lengths).
    Returns (B, C) with C = max candidates per row; missing candidates are -inf.
    Differentiable when grad is enabled (training losses use it).
    """
    B = len(rows)
    dev = lm.device
    lens = torch.tensor([len(r) for r in rows], device=dev)
    if int(lens.min()) < 1:
        raise ValueError("every row needs at least one token")
    ids, mask = pad_rows(rows, pad_id_of(lm), dev)
    if row_embeds is not None:
        hidden, kv = lm.forward(embeds=row_embeds, mask=mask, past=prefix)
    else:
        hidden, kv = lm.forward(ids=ids, mask=mask, past=prefix)
    last = hidden[torch.arange(B, device=dev), lens - 1]  # (B, hidden)
    logp0 = F.log_softmax(lm.logits(last).float(), dim=-1)  # (B, vocab): only B positions

    C = max(len(c) for c in cands)
    first = torch.zeros(B, C, dtype=torch.long, device=dev)
    valid = torch.zeros(B, C, dtype=torch.bool, device=dev)
    multi: list[tuple[int, int]] = []
    for b, cs in enumerate(cands):
        for j, c in enumerate(cs):
            if len(c) < 1:
                raise ValueError("empty candidate continuation")
            first[b, j] = c[0]
            valid[b, j] = True
            if len(c) > 1:
                multi.append((b, j))
    scores = logp0.gather(1, first)  # (B, C)

    if multi:
        rest = torch.zeros(B, C, device=dev, dtype=scores.dtype)
        for start in range(0, len(multi), max_rows_per_pass):
            chunk = multi[start : start + max_rows_per_pass]
            tails = [list(cands[b][j]) for b, j in chunk]
            in_ids, in_mask = pad_rows([t[:-1] for t in tails], pad_id_of(lm), dev)  # (R, L)
            tgt, _ = pad_rows([t[1:] for t in tails], 0, dev)  # (R, L)
            sel = torch.tensor([b for b, _ in chunk], device=dev)
            h, _ = lm.forward(ids=in_ids, mask=in_mask, past=kv.select(sel))  # (R, L, hidden)
            m = in_mask.bool()
            lp = F.log_softmax(lm.logits(h[m]).float(), dim=-1)  # (N, vocab): only real positions
            tok_lp = lp.gather(1, tgt[m].unsqueeze(1)).squeeze(1)  # (N,)
            row_of = torch.arange(len(chunk), device=dev).unsqueeze(1).expand_as(in_mask)[m]
            per_row = torch.zeros(len(chunk), device=dev, dtype=tok_lp.dtype).index_add(0, row_of, tok_lp)
            bi = torch.tensor([b for b, _ in chunk], device=dev)
            ji = torch.tensor([j for _, j in chunk], device=dev)
            rest = rest.index_put((bi, ji), per_row)
        scores = scores + rest
    return scores.masked_fill(~valid, float("-inf"))
