"""Nearest-neighbour demonstrations (Liu et al. 2022, "What Makes Good In-Context Examples for GPT-3?").

Inputs are embedded by the model itself (mean of its last hidden states), so no
extra embedding model is needed; neighbours by cosine similarity.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..task import Example
from .scoring import pad_rows, pad_id_of


@torch.no_grad()
def embed_texts(lm, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """(N, hidden) L2-normalised mean-pooled final hidden states."""
    out = []
    for i in range(0, len(texts), batch_size):
        rows = [lm.encode(t)[:256] or [pad_id_of(lm)] for t in texts[i : i + batch_size]]
        ids, mask = pad_rows(rows, pad_id_of(lm), lm.device)
        h, _ = lm.forward(ids=ids, mask=mask)
        m = mask.unsqueeze(-1).float()
        out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(out)


def nearest_demos(lm, pool: Sequence[Example], queries: Sequence[str], k: int) -> list[list[Example]]:
    """For each query, its k most similar pool examples, least similar first (nearest next to the query)."""
    pe = embed_texts(lm, [p.input for p in pool])
    qe = embed_texts(lm, list(queries))
    sims = qe @ pe.T  # (Q, P)
    top = sims.topk(min(k, len(pool)), dim=-1).indices  # (Q, k), most similar first
    return [[pool[j] for j in reversed(row.tolist())] for row in top]
