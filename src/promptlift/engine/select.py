"""Candidate selection shared by every search method: which candidates to score on how many examples.

    select(strategy, n_candidates, examples, scorer, rng, ...) -> list[Scored], best first

Three strategies, chosen per method (`selection=` option of the LLM methods):

- `full`: every candidate on every selection example (APE's and OPRO's exhaustive scoring).
- `ucb`: a UCB1 bandit over candidates (ProTeGi, Pryzant et al. 2023): each pull scores
  one more small batch of examples for the candidate with the highest upper confidence
  bound; candidates scored on every example are exact and never pulled again.
- `halving`: successive halving (Karnin et al. 2013; APE's adaptive filtering): all
  candidates on a few examples, the better half on twice as many, ... until `keep` remain.

`scorer(i, examples) -> list[float]` scores candidate `i` on `examples` (per-example
scores in [0, 1]); the search loop passes one backed by its score cache, so asking
for examples already scored costs nothing. Every strategy scores a candidate on a
*prefix* of its own fixed example order, so later rounds only pay for new examples.
This module knows nothing about prompts or models.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

STRATEGIES = ("full", "ucb", "halving")

Scorer = Callable[[int, Sequence], list]


@dataclass
class Scored:
    """One candidate's selection result.

    index: position of the candidate in the list given to `select`.
    score: mean per-example score over the `n` examples it was scored on.
    scores: those per-example scores, in the order scored.
    """

    index: int
    score: float
    n: int
    scores: list[float] = field(default_factory=list)


@dataclass
class SelectConfig:
    """Options of the selection strategies.

    keep: how many candidates halving keeps to the end (and scores on the most examples).
    min_examples: halving's first round scores every candidate on this many examples.
    ucb_sample: examples per bandit pull.
    ucb_pulls: pulls per candidate on average (total pulls = ucb_pulls * candidates).
    ucb_c: exploration constant of the bound mean + c * sqrt(ln t / n).
    """

    keep: int = 1
    min_examples: int = 4
    ucb_sample: int = 4
    ucb_pulls: int = 2
    ucb_c: float = 1.0

    def __post_init__(self):
        if self.keep < 1 or self.min_examples < 1 or self.ucb_sample < 1 or self.ucb_pulls < 1:
            raise ValueError("keep, min_examples, ucb_sample and ucb_pulls must be >= 1")


def select(strategy: str, n_candidates: int, examples: Sequence, scorer: Scorer, rng: random.Random,
           config: SelectConfig | None = None) -> list[Scored]:
    """Score `n_candidates` candidates with `strategy`; return every candidate's result, best first.

    Ties keep the candidates' original order (earlier first), so an incumbent listed
    first wins a tie against a newcomer.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown selection {strategy!r}; expected one of: {', '.join(STRATEGIES)}")
    config = config or SelectConfig()
    if n_candidates == 0:
        return []
    examples = list(examples)
    if strategy == "full" or len(examples) == 0:
        out = [_scored(i, scorer(i, examples)) for i in range(n_candidates)]
    elif strategy == "halving":
        out = successive_halving(n_candidates, examples, scorer, rng, config)
    else:
        out = ucb(n_candidates, examples, scorer, rng, config)
    return rank(out)


def rank(results: Sequence[Scored]) -> list[Scored]:
    """Best first: by score, then by how many examples back it, then original order."""
    return sorted(results, key=lambda s: (-s.score, -s.n, s.index))


def _scored(i: int, scores: Sequence[float]) -> Scored:
    scores = [float(s) for s in scores]
    return Scored(i, sum(scores) / len(scores) if scores else 0.0, len(scores), scores)


def successive_halving(n: int, examples: list, scorer: Scorer, rng: random.Random,
                       config: SelectConfig) -> list[Scored]:
    """Successive halving over one shuffled example order shared by all candidates.

    Round r scores the survivors on the first `min_examples * 2**r` examples (all of
    them in the last round) and keeps the better half, until `keep` survive or every
    example is used. Eliminated candidates keep the score of their last round.
    """
    order = list(examples)
    rng.shuffle(order)
    alive = list(range(n))
    results: dict[int, Scored] = {}
    m = min(config.min_examples, len(order))
    while True:
        for i in alive:
            results[i] = _scored(i, scorer(i, order[:m]))
        if len(alive) <= config.keep or m >= len(order):
            break
        ranked = rank([results[i] for i in alive])
        alive = [s.index for s in ranked[: max(config.keep, math.ceil(len(alive) / 2))]]
        m = min(len(order), m * 2)
        if len(alive) <= config.keep:  # the final survivors get every example
            m = len(order)
    return list(results.values())


def ucb(n: int, examples: list, scorer: Scorer, rng: random.Random, config: SelectConfig) -> list[Scored]:
    """UCB1 bandit: `ucb_pulls * n` pulls of `ucb_sample` new examples each.

    Every candidate is pulled once first; then the one maximising
    mean + c * sqrt(ln t / pulls) among those with examples left. Each candidate
    draws examples from its own shuffled order, so a pull never repeats an example.
    """
    orders = []
    for _ in range(n):
        o = list(examples)
        rng.shuffle(o)
        orders.append(o)
    used = [0] * n
    pulls = [0] * n
    results = {i: Scored(i, 0.0, 0, []) for i in range(n)}

    def pull(i: int) -> None:
        k = min(config.ucb_sample, len(orders[i]) - used[i])
        scores = [float(s) for s in scorer(i, orders[i][: used[i] + k])][used[i]:]
        used[i] += k
        pulls[i] += 1
        r = results[i]
        r.scores.extend(scores)
        r.n = len(r.scores)
        r.score = sum(r.scores) / r.n if r.n else 0.0

    for i in range(n):
        pull(i)
    for t in range(n + 1, config.ucb_pulls * n + 1):
        open_ = [i for i in range(n) if used[i] < len(orders[i])]
        if not open_:
            break
        i = max(open_, key=lambda j: (results[j].score + config.ucb_c * math.sqrt(math.log(t) / pulls[j]), -j))
        pull(i)
    return list(results.values())


def estimate_calls(strategy: str, n_candidates: int, n_examples: int, config: SelectConfig | None = None) -> int:
    """Most example scorings `select` can pay for (before cache hits): for printing an estimate."""
    config = config or SelectConfig()
    n, m = n_candidates, n_examples
    if n == 0 or m == 0:
        return 0
    if strategy == "full":
        return n * m
    if strategy == "ucb":
        return min(n * m, config.ucb_pulls * n * config.ucb_sample)
    total, alive, k, prev = 0, n, min(config.min_examples, m), 0
    while True:
        total += alive * (k - prev)
        if alive <= config.keep or k >= m:
            return total
        alive = max(config.keep, math.ceil(alive / 2))
        prev, k = k, min(m, k * 2)
        if alive <= config.keep:
            k = m


def cost_to_finish(strategy: str, n_candidates: int, n_examples: int, config: SelectConfig | None = None) -> int:
    """Most example scorings `select` can pay for plus topping its best up to all `n_examples`: what a
    search step pays to choose among `n_candidates` on the whole selection set (before cache hits)."""
    config = config or SelectConfig()
    n, m = n_candidates, n_examples
    base = estimate_calls(strategy, n, m, config)
    if n == 0 or m == 0 or strategy == "full":
        return base
    if strategy == "ucb":
        return min(n * m, base + m)
    # halving ends with its survivors on every example, unless it starts with no more than `keep`
    return base + (m - min(config.min_examples, m) if n <= config.keep else 0)
