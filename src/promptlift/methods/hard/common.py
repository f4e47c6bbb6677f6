"""What the gradient-guided token-search methods share: nearest tokens, HotFlip, and the best fixed part on dev.

What black-box methods share with these (options, vocabulary, starting tokens, the fixed part after
the tokens, the `TokenPrompt` artifact) is in `methods/shared.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...engine.search import TIEBREAK
from ...engine.soft import soft_prefix_kv
from ...errors import BudgetExceeded, ConfigError
from ..shared import Fixed, token_prompt, vocab_size

METRICS = ("cosine", "l2")


def best_on_dev(lm, task, prompts: list, results: list) -> int:
    """Index of the best of `prompts` given their dev `results` (`EvalResult`s), ties broken as the
    search loop breaks them: by the higher log-probability of the reference answers, on classification
    the gold label's over all of dev (free with the label scores), on a generation task on the first
    `TIEBREAK` dev rows (one more target call each). Other ties, and ties where the target gives no
    such value, go to the first."""
    from ...engine.evaluate import gold_label_logprob, reference_logprob

    scores = [r.accuracy for r in results]
    best = max(range(len(prompts)), key=lambda i: (scores[i], -i))
    tied = [i for i in range(len(prompts)) if scores[i] == scores[best]]
    if len(tied) > 1:
        if task.is_classification:
            ties = [_mean([gold_label_logprob(task, rec) for rec in results[i].predictions]) for i in tied]
        else:
            ties = [reference_logprob(lm, task, prompts[i], task.dev[:TIEBREAK]) for i in tied]
        if None not in ties:
            best = tied[max(range(len(tied)), key=lambda j: (ties[j], -j))]
    return best


def best_body(lm, task, found: list[int], choices: list[Fixed], ctx) -> tuple[list[int], list]:
    """The fixed part (instruction tokens, demos) of the best start on dev, for a method that trains.

    Each of `choices` after the starting tokens `found` is scored on dev through the engine; ties
    as `best_on_dev` breaks them. One choice, no dev set, or a budget that runs out: the first.
    """
    from ...engine.evaluate import evaluate

    bodies = [f.ids(lm) for f in choices]
    if len(bodies) == 1 or not task.dev:
        return bodies[0], list(choices[0].demos)
    prompts = [token_prompt(lm, found, b, demos=f.demos) for b, f in zip(bodies, choices)]
    try:
        results = [evaluate(lm, task, p, split="dev", progress=False, reporter=ctx.reporter) for p in prompts]
    except BudgetExceeded as e:
        ctx.note(f"{e}; keeping the task's instruction")
        return bodies[0], list(choices[0].demos)
    best = best_on_dev(lm, task, prompts, results)
    ctx.record(event="instruction", dev={f.label: r.accuracy for f, r in zip(choices, results)},
               kept=choices[best].label)
    return bodies[best], list(choices[best].demos)


def _mean(values: list) -> float | None:
    """The mean, or None if any value is missing."""
    return None if not values or None in values else sum(values) / len(values)


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
    lm.budget.charge(backward=1)
    return emb.grad.detach(), loss.item()
