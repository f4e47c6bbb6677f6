"""Nearest-neighbour demonstrations (Liu et al. 2022, "What Makes Good In-Context Examples for GPT-3?").

Two embedders:
- the model itself (mean of its last hidden states): no extra embedding model,
  local models only;
- TF-IDF over lower-cased words: needs no model, so it works on any endpoint.
Neighbours by cosine similarity.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

import torch

from ..lm.scoring import pad_id_of, pad_rows

_WORD = re.compile(r"\w+", re.UNICODE)


@torch.no_grad()
def embed_texts(lm, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """(N, hidden) L2-normalised mean-pooled final hidden states."""
    out = []
    for i in range(0, len(texts), batch_size):
        rows = [lm.encode(t)[:256] or [pad_id_of(lm)] for t in texts[i : i + batch_size]]
        ids, mask = pad_rows(rows, pad_id_of(lm), lm.device)
        h, _ = lm.forward(ids=ids, mask=mask)
        m = mask.unsqueeze(-1).to(h.dtype)
        out.append(torch.nn.functional.normalize(((h * m).sum(1) / m.sum(1)).float(), dim=-1).cpu())
    return torch.cat(out)


def tfidf_fit(texts: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """The vocabulary (sorted lower-cased words) of `texts` and each word's smoothed IDF: (V words, (V,) tensor)."""
    docs = [Counter(_WORD.findall(t.lower())) for t in texts]
    vocab = sorted({w for d in docs for w in d})
    df = Counter(w for d in docs for w in d)
    idf = torch.tensor([math.log((1 + len(docs)) / (1 + df[w])) + 1.0 for w in vocab]) if vocab else torch.zeros(0)
    return vocab, idf


def tfidf_vectors(texts: Sequence[str], vocab: Sequence[str], idf: torch.Tensor) -> torch.Tensor:
    """(N, V) L2-normalised TF-IDF vectors of `texts` over a fitted vocabulary (`tfidf_fit`); other words count nothing."""
    index = {w: i for i, w in enumerate(vocab)}
    out = torch.zeros(len(texts), len(vocab))
    for r, text in enumerate(texts):
        for w, c in Counter(_WORD.findall(text.lower())).items():
            if w in index:
                out[r, index[w]] = c
    return torch.nn.functional.normalize(out * idf.float(), dim=-1)


def tfidf_embed(pool: Sequence[str], queries: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised TF-IDF vectors of pool and queries, with IDF from the pool: (P, V), (Q, V)."""
    vocab, idf = tfidf_fit(pool)
    return tfidf_vectors(pool, vocab, idf), tfidf_vectors(queries, vocab, idf)


def nearest(query_emb: torch.Tensor, pool_emb: torch.Tensor, k: int) -> list[list[int]]:
    """For each query, the indices of its k most similar pool rows, least similar first (nearest next to the input).

    Ties are broken by pool order, so the choice is deterministic.
    """
    sims = query_emb @ pool_emb.T  # (Q, P)
    k = min(k, pool_emb.shape[0])
    out = []
    for row in sims.tolist():
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
        out.append(list(reversed(order)))
    return out


def nearest_demos(lm, pool, queries: Sequence[str], k: int):
    """For each query, its k most similar pool examples by the model's embeddings, least similar first."""
    pe = embed_texts(lm, [p.input for p in pool])
    qe = embed_texts(lm, list(queries))
    return [[pool[j] for j in row] for row in nearest(qe, pe, k)]
