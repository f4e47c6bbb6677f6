"""What the gradient-guided token-search methods share: nearest tokens, HotFlip, and the best fixed part on dev.

What black-box methods share with these (options, vocabulary, starting tokens, the fixed part after
the tokens, the `TokenPrompt` artifact) is in `methods/shared.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...engine.search import best_of
from ...engine.soft import soft_prefix_kv
from ...errors import ConfigError
from ...lm.budget import ledger_of
from ..shared import Fixed, token_prompt, vocab_size

METRICS = ("cosine", "l2")


def best_body(lm, task, found: list[int], choices: list[Fixed], ctx) -> tuple[list[int], list]:
    """The fixed part (instruction tokens, demos) of the best start on dev, for a method that trains.

    Each of `choices` after the starting tokens `found` is scored on dev and the best kept by the
    search loop's one rule (`engine.search.best_of`: ties by the reference answers' log-probability,
    then the first). One choice or no dev set: the first; a budget that runs out: the best scored so far.
    """
    bodies = [f.ids(lm) for f in choices]
    if len(bodies) == 1 or not task.dev:
        return bodies[0], list(choices[0].demos)
    prompts = [token_prompt(lm, found, b, demos=f.demos) for b, f in zip(bodies, choices)]
    choice = best_of(prompts, lm, task, ctx, name="instruction")
    if choice.stopped:
        ctx.note(f"budget exhausted choosing the instruction; keeping {choices[choice.index].label!r}")
    ctx.record(event="instruction", dev={f.label: s for f, s in zip(choices, choice.scores)},
               kept=choices[choice.index].label)
    return bodies[choice.index], list(choices[choice.index].demos)


@torch.no_grad()
def vocab_embeddings(lm) -> torch.Tensor:
    """(V, hidden) float32: every token's input embedding, as the model scales it (`lm.embed`)."""
    return lm.embed(torch.arange(vocab_size(lm), device=lm.device)).float()


def similarity(vectors: torch.Tensor, table: torch.Tensor, metric: str) -> torch.Tensor:
    """(k, V) how near each of `vectors` (k, hidden) is to each row of `table` (V, hidden); higher = nearer.

    cosine: cosine similarity. l2: minus the Euclidean distance, divided by the vector's norm
    (scale-free, so it can be added to other scores).
    """
    v, t = vectors.float(), table.float()
    if metric == "cosine":
        return F.normalize(v, dim=-1) @ F.normalize(t, dim=-1).T
    if metric == "l2":
        return -torch.cdist(v, t) / v.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")


def nearest_tokens(vectors: torch.Tensor, table: torch.Tensor, allowed: torch.Tensor, metric: str) -> torch.Tensor:
    """(k,) the allowed token nearest to each of `vectors` (k, hidden)."""
    sim = similarity(vectors, table, metric).masked_fill(~allowed, float("-inf"))  # (k, V)
    return sim.argmax(-1)


def hotflip(grad: torch.Tensor, table: torch.Tensor, allowed: torch.Tensor, current: int, k: int) -> list[int]:
    """The `k` allowed token ids whose swap into one prompt position most lowers the loss, to first order.

    HotFlip (Ebrahimi et al. 2018), as AutoPrompt ranks swaps: grad (hidden,) is the loss's gradient at
    the position's input embedding, table (V, hidden) every token's embedding; token w gains -grad · e_w.
    The current token is never returned.
    """
    gain = -(table @ grad.to(table.dtype))  # (V,)
    gain[current] = float("-inf")
    gain = gain.masked_fill(~allowed, float("-inf"))
    k = min(k, int(allowed.sum()) - int(bool(allowed[current])))
    return gain.topk(max(k, 0)).indices.tolist()


def token_gradient(lm, layout, header, table: torch.Tensor, found: list[int], loss_of) -> tuple[torch.Tensor, float]:
    """Gradient of a loss at each prompt token's embedding (k, hidden), and the loss (HotFlip's signal).

    The token prompt `found` sits after the chat header (`header`: its cached key/values) as vectors
    taken from `table`; `loss_of(prefix)` scores the task's rows after that prefix and returns a scalar
    tensor. One backward pass, charged to the model's budget.
    """
    emb = table[torch.tensor(found, device=lm.device)].clone().requires_grad_(True)  # (k, hidden)
    with torch.enable_grad():
        loss = loss_of(soft_prefix_kv(lm, layout, emb, "after_header", -1, header))
        loss.backward()
    ledger_of(lm).charge(backward=1)
    return emb.grad.detach(), loss.item()
