"""`promptlift select`: train a `SelectorPrompt` over a pool of prompts and write it as a run.

Two ways to learn which member serves an input:

- across tasks (no `--data`): the members come from different tasks; member k's training inputs are its own
  task's train rows, so the classifier learns to route an input to its task's member (one endpoint for many
  tasks, no task name from the client). Scored by routing accuracy.
- within one task (`--data DIR`): every member answers the task's train rows; an input's target is the
  members that answer it correctly (shared equally among them); an input that all or none answer correctly
  points to the member best on train overall (it carries no preference of its own). Scored by the task's
  accuracy through the chosen members, beside each member's own and the oracle's (the best member per input).

Features: TF-IDF fitted on the training inputs (stored in the artifact, so it works on an endpoint) or the
local model's own embeddings (`WhiteBox.embed_texts`). The classifier (linear, or one ReLU hidden layer) is
fitted full-batch with Adam on the train rows; its width and weight decay are chosen on dev (never test).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from .artifacts import Prompt, SelectorPrompt
from .engine.apply import query_text
from .engine.neighbors import tfidf_fit, tfidf_vectors
from .engine.selector import classifier_logits
from .errors import ConfigError
from .task import Task

HIDDEN = (0, 64)  # linear, or one hidden layer of 64
WEIGHT_DECAY = (0.0, 1e-3, 1e-2)
STEPS = 300
LR = 0.05


@dataclass
class Member:
    """One pool entry: its artifact, where it came from, and (across tasks) the task whose inputs it serves."""

    prompt: Prompt
    source: str
    task: Task | None = None


@dataclass
class Rows:
    """Inputs of one split with, per input, a (K,) target distribution over members and the members that
    count as right: targets (N, K) summing to 1, right (N, K) bool."""

    inputs: list
    targets: torch.Tensor
    right: torch.Tensor


def _cap(rows: Sequence, limit: int | None, seed: int) -> list:
    rows = list(rows)
    if limit is not None and len(rows) > limit:
        rows = random.Random(seed).sample(rows, limit)
    return rows


def within_task_rows(inputs: list, right: torch.Tensor, fallback: int) -> Rows:
    """Targets from which members answer each input correctly (`right`: (N, K) bool); inputs that every
    member or no member answers point to `fallback` (the member best on train)."""
    n, k = right.shape
    targets = right.float().clone()
    flat = (right.sum(1) == 0) | (right.sum(1) == k)
    targets[flat] = 0.0
    targets[flat, fallback] = 1.0
    return Rows(inputs, targets / targets.sum(1, keepdim=True), right)


def features_of(kind: str, texts: list[str], vocab, idf, backend) -> torch.Tensor:
    """(N, D) features, as `engine.selector.selector_features` computes them at inference."""
    return tfidf_vectors(texts, vocab, idf) if kind == "tfidf" else backend.embed_texts(texts).float().cpu()


def fit(feats: torch.Tensor, targets: torch.Tensor, hidden: int, weight_decay: float, seed: int) -> dict:
    """The classifier's tensors {w1, b1, w2, b2} fitted to soft `targets` (N, K) from `feats` (N, D)."""
    torch.manual_seed(seed)
    d, k = feats.shape[1], targets.shape[1]
    layers = [torch.nn.Linear(d, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, k)] if hidden else \
        [torch.nn.Linear(d, k)]
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), lr=LR, weight_decay=weight_decay)
    for _ in range(STEPS):
        opt.zero_grad()
        loss = -(targets * torch.log_softmax(net(feats), -1)).sum(1).mean()
        loss.backward()
        opt.step()
    first, last = net[0], net[-1]
    if hidden:
        return {"w1": first.weight.detach().clone(), "b1": first.bias.detach().clone(),
                "w2": last.weight.detach().clone(), "b2": last.bias.detach().clone()}
    return {"w1": torch.zeros(0, 0), "b1": torch.zeros(0), "w2": last.weight.detach().clone(),
            "b2": last.bias.detach().clone()}


def accuracy(chosen: torch.Tensor, right: torch.Tensor) -> float:
    """Share of inputs whose chosen member counts as right."""
    return float(right[torch.arange(len(chosen)), chosen].float().mean()) if len(chosen) else 0.0


def train_selector(members: Sequence[Member], train: Rows, dev: Rows, *, features: str, backend, seed: int,
                   model: str | None) -> tuple[SelectorPrompt, dict]:
    """The selector chosen on dev (hidden width x weight decay), and the grid's dev scores."""
    if features == "tfidf":
        vocab, idf = tfidf_fit([query_text(x) for x in train.inputs])
    else:
        vocab, idf = [], torch.zeros(0)
    ftrain = features_of(features, [query_text(x) for x in train.inputs], vocab, idf, backend)
    fdev = features_of(features, [query_text(x) for x in dev.inputs], vocab, idf, backend)
    best, grid = None, []
    for hidden in HIDDEN:
        for wd in WEIGHT_DECAY:
            tensors = fit(ftrain, train.targets, hidden, wd, seed)
            p = SelectorPrompt(members=[m.prompt for m in members], features=features, dim=ftrain.shape[1],
                               vocab=list(vocab), idf=idf.float(), model=model, method="select", **tensors)
            score = accuracy(classifier_logits(p, fdev).argmax(-1), dev.right)
            grid.append({"hidden": hidden, "weight_decay": wd, "dev": round(score, 4)})
            if best is None or score > best[0]:  # ties keep the simpler, earlier one
                best = (score, p, hidden, wd)
    _, p, hidden, wd = best
    p.meta = {"hidden": hidden, "weight_decay": wd, "seed": seed, "features": features}
    return p, {"hidden": hidden, "weight_decay": wd, "grid": grid}


def routed(p: SelectorPrompt, rows: Rows, backend) -> dict:
    """The selector's score on `rows` and how often it picks each member."""
    feats = features_of(p.features, [query_text(x) for x in rows.inputs], p.vocab, p.idf, backend)
    chosen = classifier_logits(p, feats).argmax(-1)
    share = torch.bincount(chosen, minlength=len(p.members)).float() / max(1, len(chosen))
    return {"accuracy": round(accuracy(chosen, rows.right), 4), "n": len(rows.inputs),
            "chosen_share": [round(float(s), 4) for s in share]}


def _dev_of(rows: list, seed: int) -> tuple[list, list]:
    """(train, dev): a task without dev rows gives a fifth of its train rows to dev (chosen with `seed`)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    cut = max(1, len(rows) // 5)
    return rows[cut:], rows[:cut]


def member_info(m: Member) -> dict:
    return {"source": m.source, "type": m.prompt.type, "task": m.prompt.task or (m.task.name if m.task else None),
            "sha256": m.prompt.hash}


def select_across(members: Sequence[Member], *, features: str, backend, seed: int, limit: int | None,
                  model: str | None) -> tuple[SelectorPrompt, dict]:
    """A selector routing each input to the member of its task (`Member.task` of each); result with routing
    accuracy on dev and test (where every task has test rows) and each member's share."""
    train, dev = [], []
    for m in members:
        rows = _cap(m.task.train, limit, seed)
        if m.task.dev:
            train.append(rows)
            dev.append(_cap(m.task.dev, limit, seed))
        else:
            a, b = _dev_of(rows, seed)
            train.append(a)
            dev.append(b)

    def rows_of(per_member: list[list]) -> Rows:
        inputs = [ex.input for rows in per_member for ex in rows]
        owner = torch.tensor([i for i, rows in enumerate(per_member) for _ in rows], dtype=torch.long)
        right = torch.zeros(len(inputs), len(members), dtype=torch.bool)
        right[torch.arange(len(inputs)), owner] = True
        return Rows(inputs, right.float(), right)

    t0 = time.perf_counter()
    p, chosen = train_selector(members, rows_of(train), rows_of(dev), features=features, backend=backend,
                               seed=seed, model=model)
    result = {"method": "select", "mode": "tasks", "features": features, "chosen": chosen,
              "dev": {"routing_accuracy": routed(p, rows_of(dev), backend)},
              "members": [member_info(m) for m in members]}
    if all(m.task.test for m in members):
        result["test"] = {"routing_accuracy": routed(p, rows_of([_cap(m.task.test, limit, seed) for m in members]),
                                                     backend)}
    result["seconds"] = seconds_since(t0)
    return p, result


def select_within(members: Sequence[Member], task: Task, lm, *, features: str, backend, seed: int,
                  limit: int | None, model: str | None) -> tuple[SelectorPrompt, dict]:
    """A selector picking, per input of `task`, a member that answers it correctly; result with the task's
    accuracy through the selector, each member's and the oracle's, on dev and test."""
    from .engine.evaluate import evaluate

    t0 = time.perf_counter()
    train = _cap(task.split("train"), limit, seed)
    dev = task.dev or []
    if not dev:
        train, dev = _dev_of(train, seed)
    splits = {"train": train, "dev": _cap(dev, limit, seed), "test": _cap(task.test, limit, seed)}
    right: dict[str, torch.Tensor] = {}
    for name, rows in splits.items():
        if rows:
            cols = [[r["score"] >= 1.0 for r in evaluate(lm, task, m.prompt, examples=rows, split=name,
                                                          progress=False).predictions] for m in members]
            right[name] = torch.tensor(cols, dtype=torch.bool).T  # (N, K)
    best = int(right["train"].float().mean(0).argmax())
    rows = {n: within_task_rows([ex.input for ex in splits[n]], r, best) for n, r in right.items()}
    p, chosen = train_selector(members, rows["train"], rows["dev"], features=features, backend=backend, seed=seed,
                               model=model)
    p.made_for(task)
    result = {"method": "select", "mode": "inputs", "task": task.name, "features": features, "chosen": chosen,
              "members": [member_info(m) for m in members]}
    for name in ("dev", "test"):
        if name in rows:
            r = rows[name]
            member_acc = r.right.float().mean(0)
            result[name] = {"accuracy": routed(p, r, backend)["accuracy"], "n": len(r.inputs),
                            "members": [round(float(a), 4) for a in member_acc],
                            "best_member": round(float(member_acc.max()), 4),
                            "oracle": round(float(r.right.any(1).float().mean()), 4),
                            "chosen_share": routed(p, r, backend)["chosen_share"]}
    result["seconds"] = seconds_since(t0)
    return p, result


def check_pool(members: Sequence[Member]) -> None:
    """Refuse an empty pool (the CLI checks the rest before any model loads)."""
    if not members:
        raise ConfigError("select needs a pool: give --pool RUN [RUN ...] (at least one run or prompt artifact)")


def seconds_since(t0: float) -> float:
    return round(time.perf_counter() - t0, 3)


__all__ = ["Member", "Rows", "select_across", "select_within", "within_task_rows", "train_selector", "routed", "fit",
           "accuracy", "check_pool"]
