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
