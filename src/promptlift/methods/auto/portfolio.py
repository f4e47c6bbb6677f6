"""`--method auto`: a small portfolio of prompts and pipelines, raced on dev; the best one is kept.

Registered as `portfolio` with the alias `auto` ("auto" is also an option value the shared engine reads).

Racing (in the spirit of F-Race / CAPO): the candidates are scored on dev in chunks, cheap ones first; after
each chunk, a candidate whose per-example dev scores are behind the leader's by a paired test
(`metrics.paired_gain`: McNemar's exact test on 0/1 scores, a paired bootstrap on graded ones, at 5 %) is
dropped and scored no further. The pick is the best fully scored candidate (dev score, then fewer prompt
tokens, then the earlier one); the plain baselines are in the race and the leader is never dropped, so the pick
is never below the best baseline measured on dev.

Portfolio: the task's instruction, no instruction, calibrated, few-shot with k in {4, 8, 16} (bounded by the
train split), then on a local model prompt tuning initialised from the best text prompt's instruction (a
pipeline stage, `methods/auto/pipeline.py`), then calibration on top of the winner (where label scores exist).
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field

from ...artifacts import Calibrated, Prompt, TextPrompt
from ...artifacts.base import from_json
from ...engine.evaluate import evaluate
from ...errors import BudgetExceeded
from ...lm.budget import ledger_of
from ...metrics import paired_gain
from ...registry import get_method, register
from ..base import Method
from ..shared import balanced_sample
from .pipeline import run_stages


@dataclass
class Entry:
    """One candidate of the race: its prompt, per-example dev scores so far, and what scoring it cost."""

    name: str
    prompt: Prompt
    baseline: bool = True
    scores: list = field(default_factory=list)
    dropped_at: int | None = None  # dev rows scored when a paired test put it behind the leader
    prompt_tokens: float | None = None  # per dev call, from the budget's counters
    calls: int = 0
    seconds: float = 0.0

    @property
    def dev(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None

    def row(self) -> dict:
        return {"name": self.name, "dev": self.dev, "rows": len(self.scores), "dropped_at": self.dropped_at,
                "prompt_tokens": self.prompt_tokens, "calls": self.calls, "baseline": self.baseline}


def race(entries: list[Entry], lm, task, chunk: int, alpha: float = 0.05) -> list[Entry]:
    """Score `entries` on dev in chunks of `chunk` rows, dropping those a paired test puts behind the leader.

    Returns the entries, every survivor scored on all of dev. Entries already scored keep their scores (a new
    entry joins a race under way: it is scored up to the others' rows, then tested)."""
    dev = list(task.split("dev"))
    for n in range(chunk, len(dev) + chunk, chunk):
        rows = dev[:n]
        alive = [e for e in entries if e.dropped_at is None]
        for e in alive:
            if len(e.scores) < len(rows):
                _score(e, lm, task, rows[len(e.scores):])
        leader = max(alive, key=_rank)
        if n >= len(dev):
            break
        for e in alive:
            if e is not leader and _behind(e, leader, alpha):
                e.dropped_at = len(e.scores)
    return entries


def _score(e: Entry, lm, task, rows) -> None:
    before, t0 = ledger_of(lm).counters(), time.perf_counter()
    r = evaluate(lm, task, e.prompt, examples=rows, progress=False)
    after = ledger_of(lm).counters()
    e.scores += [p["score"] for p in r.predictions]
    e.calls += after["calls"] - before["calls"]
    e.seconds += time.perf_counter() - t0
    calls = after["calls"] - before["calls"]
    if calls and after["prompt_tokens"] > before["prompt_tokens"]:
        e.prompt_tokens = (after["prompt_tokens"] - before["prompt_tokens"]) / calls


def _rank(e: Entry) -> tuple:
    """Higher is better: the dev score, then fewer prompt tokens (unknown counts as none)."""
    return (e.dev if e.dev is not None else -1.0, -(e.prompt_tokens or 0.0))


def _behind(e: Entry, leader: Entry, alpha: float) -> bool:
    n = min(len(e.scores), len(leader.scores))
    g = paired_gain(e.scores[:n], leader.scores[:n], alpha=alpha)
    return g["significant"] and g["gain"] > 0


@register("portfolio", "auto")
class Auto(Method):
    """A portfolio sized to the backend, raced on dev with a paired test; ties to the fewer prompt tokens."""

    family = "auto"
    smoke = {"tune": False, "shots": "2"}

    @dataclass
    class Config:
        shots: str = field(default="4,8,16", metadata={"help": "few-shot sizes k tried (bounded by the train split)"})
        tune: bool = field(default=True, metadata={
            "help": "local model: prompt tuning from the best text prompt's instruction"})
        tokens: int = field(default=20, metadata={"help": "soft tokens of the prompt-tuning candidate"})
        epochs: int = field(default=5, metadata={"help": "epochs of the prompt-tuning candidate"})
        chunk: int = field(default=0, metadata={"help": "dev rows per racing round (0 = a quarter of dev, >= 8)"})

        def __post_init__(self):
            ks = [s for s in str(self.shots).split(",") if s.strip()]
            if not all(s.strip().isdigit() and int(s) >= 1 for s in ks):
                raise ValueError(f"shots must be sizes >= 1 joined by commas, got {self.shots!r}")
            if self.tokens < 1 or self.epochs < 1 or self.chunk < 0:
                raise ValueError("tokens and epochs must be >= 1, chunk >= 0")

    def fit(self, lm, task, ctx):
        c = self.config
        n_dev = len(task.split("dev"))
        chunk = c.chunk or max(8, n_dev // 4)
        labels = task.is_classification and getattr(lm, "is_white_box", False) or _scores_labels(lm)
        entries = [Entry("zero-shot", TextPrompt(instruction=task.instruction))]
        if task.instruction:
            entries.append(Entry("zero-shot (no instruction)", TextPrompt(instruction="")))
        if task.is_classification and labels:
            entries.append(Entry("calibrated", Calibrated(inner=TextPrompt(instruction=task.instruction))))
        for k in sorted({int(s) for s in str(c.shots).split(",") if s.strip()}):
            if k <= len(task.train):
                demos = balanced_sample(task, k, random.Random(ctx.seed))
                entries.append(Entry(f"few-shot k={k}", TextPrompt(instruction=task.instruction, demos=demos)))
        try:
            race(entries, lm, task, chunk)
            if c.tune and getattr(lm, "is_white_box", False):
                tuner = get_method("prompt-tuning")(tokens=c.tokens, epochs=c.epochs)
                tuner_takes = type(tuner).takes
                start = max((e for e in entries if e.dropped_at is None and e.prompt.type in tuner_takes),
                            key=_rank).prompt
                tuned, _ = run_stages([tuner], lm, task, ctx, start)
                if tuned.hash != start.hash:
                    entries.append(Entry("prompt-tuning from the best", tuned, baseline=False))
                    race(entries, lm, task, chunk)
            if task.is_classification and labels:
                best = max((e for e in entries if e.dropped_at is None), key=_rank)
                if best.prompt.type != "calibrated":
                    entries.append(Entry(f"calibrated {best.name}", Calibrated(inner=best.prompt), baseline=False))
                    race(entries, lm, task, chunk)
            stopped = ""
        except BudgetExceeded:
            stopped = "budget"
        for e in entries:  # the seconds go to the history, not the artifact (a resumed run makes the same one)
            ctx.record(event="candidate", **e.row(), seconds=round(e.seconds, 3))
        full = [e for e in entries if e.dropped_at is None and len(e.scores) == n_dev] or entries[:1]
        pick = max(full, key=_rank)
        base = max((e for e in full if e.baseline), key=_rank, default=pick)
        meta = {**pick.prompt.meta, "auto": {"chosen": pick.name, "best_baseline": base.name,
                                             "leaderboard": [e.row() for e in entries],
                                             "best_baseline_prompt": base.prompt.to_dict()}}
        if stopped:
            meta["stopped"] = stopped
        return dataclasses.replace(pick.prompt, meta=meta)

    def summarize(self, lm, task, run, ctx) -> dict:
        """The leaderboard, the pick, and its test gain over the best baseline on dev (paired, 95 %)."""
        info = dict(run.prompt.meta.get("auto") or {})
        base_doc = info.pop("best_baseline_prompt", None)
        gate = None
        if run.test is not None and run.test.predictions and base_doc is not None:
            base = evaluate(lm, task, from_json(base_doc, {}, "auto's best baseline"), split="test", progress=False)
            pairs = [(b["score"], a["score"]) for b, a in zip(base.predictions, run.test.predictions)]
            gate = {"baseline": info.get("best_baseline"), "baseline_score": base.accuracy,
                    **paired_gain([b for b, _ in pairs], [a for _, a in pairs])}
        return {"auto": {**info, "gate": gate}}


def _scores_labels(lm) -> bool:
    caps = getattr(lm, "capabilities", None)
    return bool(callable(caps) and caps().get("logprobs"))
