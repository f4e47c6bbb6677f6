"""Metrics and their uncertainty: accuracy with a 95% interval, generation match scores."""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Callable, Sequence

from .errors import ConfigError


def wilson_ci95(k: float, n: int) -> tuple[float, float]:
    """95% Wilson score interval for a proportion k/n (well-behaved near 0 and 1, small n)."""
    if n == 0:
        return (0.0, 0.0)
    z = 1.959963984540054
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))  # contains p despite rounding


def normalize(s: str) -> str:
    """Lowercase, strip punctuation, articles and extra whitespace (SQuAD-style)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(pred: str, gold: str) -> float:
    """1.0 if prediction and reference are equal after `normalize`, else 0.0."""
    return float(normalize(pred) == normalize(gold))


def contains(pred: str, gold: str) -> float:
    """1.0 if the normalized reference occurs in the normalized prediction (never for an empty reference)."""
    g = normalize(gold)
    return float(bool(g) and g in normalize(pred))


def token_f1(pred: str, gold: str) -> float:
    """SQuAD-style token F1 between prediction and reference after `normalize`."""
    p, g = normalize(pred).split(), normalize(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(g)
    return 2 * prec * rec / (prec + rec)


GENERATION_METRICS: dict[str, Callable[[str, str], float]] = {
    "exact": exact_match,
    "contains": contains,
    "f1": token_f1,
}


CLASSIFICATION_METRICS = ("accuracy",)


def check_metric(metric: object, kind: str) -> None:
    """Raise ConfigError unless `metric` can score a task of `kind` ("classification" | "generation").

    Classification is scored by rank classification, so its only metric is "accuracy";
    generation takes a name in `GENERATION_METRICS` or a function (pred, gold) -> score.
    """
    if kind == "classification":
        if metric not in CLASSIFICATION_METRICS:
            raise ConfigError(f"a classification task is scored by accuracy; metric {metric!r} is not for "
                              f"classification (generation metrics: {', '.join(GENERATION_METRICS)})")
        return
    if callable(metric) or metric in GENERATION_METRICS:
        return
    if metric in CLASSIFICATION_METRICS:
        raise ConfigError(f"metric {metric!r} is for classification; a generation task takes one of: "
                          f"{', '.join(GENERATION_METRICS)} or a function")
    raise ConfigError(f"unknown metric {metric!r}; expected one of: {', '.join(GENERATION_METRICS)} or a function")


def get_metric(metric: str | Callable[[str, str], float]) -> Callable[[str, str], float]:
    """A generation metric by name, or the user's own function (pred, gold) -> score in [0, 1]."""
    if callable(metric):
        return metric
    if metric not in GENERATION_METRICS:
        raise ConfigError(f"unknown metric {metric!r}; expected one of: {', '.join(GENERATION_METRICS)} or a function")
    return GENERATION_METRICS[metric]


def summarize(scores: Sequence[float], golds: Sequence[str] | None = None,
              preds: Sequence[str] | None = None) -> dict:
    """Mean score with a 95% interval; per-class accuracy/precision/recall when labels are given.

    For 0/1 scores the interval is Wilson's; for graded scores (F1) a normal
    approximation of the mean.
    """
    n = len(scores)
    mean = sum(scores) / n if n else 0.0
    if all(s in (0.0, 1.0) for s in scores):
        ci = wilson_ci95(sum(scores), n)
    else:
        var = sum((s - mean) ** 2 for s in scores) / max(1, n - 1)
        half = 1.96 * math.sqrt(var / max(1, n))
        ci = (max(0.0, mean - half), min(1.0, mean + half))
    out = {"accuracy": mean, "n": n, "ci95": [ci[0], ci[1]]}
    if golds is not None and preds is not None:
        per: dict[str, dict] = {}
        for lab in sorted((set(golds) | set(preds)) - {None}):  # None: an answer that matched no label
            tp = sum(1 for g, p in zip(golds, preds) if g == lab and p == lab)
            support = sum(1 for g in golds if g == lab)
            predicted = sum(1 for p in preds if p == lab)
            per[lab] = {
                "support": support,
                "recall": tp / support if support else 0.0,
                "precision": tp / predicted if predicted else 0.0,
                "predicted": predicted,
            }
        out["per_class"] = per
    return out


def paired_gain(before: Sequence[float], after: Sequence[float], *, alpha: float = 0.05,
                resamples: int = 10000, seed: int = 0) -> dict:
    """The gain `mean(after) - mean(before)` over the same examples, with a paired test and its interval.

    before/after: per-example scores of two prompts on the same rows, in the same order.
    0/1 scores (accuracy, exact match): McNemar's exact test on the discordant pairs
    (b = rows only `after` gets right, c = rows only `before` gets right; p = P(Binomial(b + c, 1/2)
    as far from the middle as min(b, c)), two-sided) and the Wald interval of a paired difference with
    continuity correction, (b - c) / n +- (z * sqrt(b + c - (b - c)^2 / n) + 1) / n (the plain Wald
    interval can exclude 0 where the exact test does not reject). Graded scores (F1): a seeded paired bootstrap
    of the mean difference (percentile interval; p = twice the smaller tail at 0).
    """
    if len(before) != len(after):
        raise ValueError(f"paired scores need the same rows: {len(before)} != {len(after)}")
    n = len(before)
    if n == 0:
        return {"gain": 0.0, "ci95": [0.0, 0.0], "p_value": 1.0, "n": 0, "test": "none", "significant": False}
    diffs = [a - b for a, b in zip(after, before)]
    gain = sum(diffs) / n
    if all(s in (0.0, 1.0) for s in (*before, *after)):
        b = sum(1 for d in diffs if d > 0)
        c = sum(1 for d in diffs if d < 0)
        m = b + c
        p = min(1.0, 2 * sum(math.comb(m, k) for k in range(min(b, c) + 1)) / 2 ** m) if m else 1.0
        z = 1.959963984540054
        half = (z * math.sqrt(max(0.0, m - (b - c) ** 2 / n)) + 1) / n
        lo, hi, test = gain - half, gain + half, "mcnemar-exact"
    else:
        import random

        rng = random.Random(seed)
        means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
        lo, hi = means[int(alpha / 2 * resamples)], means[int((1 - alpha / 2) * resamples) - 1]
        below = sum(1 for x in means if x <= 0) / resamples
        above = sum(1 for x in means if x >= 0) / resamples
        p, test = min(1.0, 2 * min(below, above)), "paired-bootstrap"
    return {"gain": gain, "ci95": [max(-1.0, lo), min(1.0, hi)], "p_value": p, "n": n, "test": test,
            "significant": p < alpha}


def describe_gain(g: dict, baseline: str = "zero-shot") -> str:
    """One line: 'gain over zero-shot +0.100 (95% CI -0.013 to +0.213; McNemar exact p=0.109: not significant)'."""
    test = {"mcnemar-exact": "McNemar exact", "paired-bootstrap": "paired bootstrap"}.get(g["test"], g["test"])
    verdict = "significant at 5%" if g["significant"] else "not significant"
    return (f"gain over {baseline} {g['gain']:+.3f} (95% CI {g['ci95'][0]:+.3f} to {g['ci95'][1]:+.3f}; "
            f"{test} p={g['p_value']:.3g}, n={g['n']}: {verdict})")
