"""Reflective prompt evolution, after Agrawal et al. 2025, "GEPA: Reflective Prompt Evolution Can Outperform
Reinforcement Learning".

Every candidate scored on the whole dev set has a vector of per-example scores, so
the Pareto frontier over dev examples is a query on the score cache: the candidates
that are best on at least one example and dominated by none. Each step samples a
parent from the frontier (in proportion to the examples it is best on, not only the
best mean), runs it on a training minibatch, and shows the optimizer every answer
with the metric's textual feedback ("wrong: the answer was X, the correct answer
is Y"); the optimizer writes a new instruction. The child is kept only if it beats
its parent on that same minibatch, and is then scored on dev. Every `merge_every`
steps, two frontier candidates that win on different examples are merged instead.

A 135M proposer rarely follows the reflection request well (the GEPA notes warn of
this); the minibatch gate keeps the cost of its bad proposals to a few examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...engine.search import Candidate, SearchState
from ...registry import register
from .common import (LLMConfig, LLMMethod, answer, error_pool, feedback, instruction_of, propose, short, tried,
                     with_instruction)


def pareto_front(state: SearchState) -> dict[str, int]:
    """{candidate: examples on which it is best} for the non-dominated candidates, in ranking order."""
    rows = [(k, state.dev_scores(k)) for k, _ in state.ranking()]
    if not rows:
        return {}
    n = len(state.dev)
    top = [max(s[i] for _, s in rows) for i in range(n)]
    front = {}
    for k, s in rows:
        wins = sum(1 for i in range(n) if s[i] >= top[i])
        dominated = any(all(b >= a for a, b in zip(s, t)) and any(b > a for a, b in zip(s, t))
                        for k2, t in rows if k2 != k)
        if wins and not dominated:
            front[k] = wins
    return front


def complementary_pair(state: SearchState, front: dict[str, int]) -> tuple[str, str] | None:
    """The two frontier candidates that win on the most examples the other loses (None if fewer than two)."""
    keys = list(front)
    if len(keys) < 2:
        return None
    scores = {k: state.dev_scores(k) for k in keys}

    def gain(a: str, b: str) -> int:
        return sum(1 for x, y in zip(scores[a], scores[b]) if x != y)

    pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1 :]]
    return max(pairs, key=lambda p: gain(*p))


def next_minibatch(state: SearchState, size: int) -> list:
    """The next `size` examples of a shuffled pass over the training split (reshuffled each epoch)."""
    pool = error_pool(state)
    d = state.data
    if not d.get("order") or d["pos"] + size > len(d["order"]):
        order = list(range(len(pool)))
        state.rng.shuffle(order)
        d["order"], d["pos"] = order, 0
    idx = d["order"][d["pos"] : d["pos"] + size]
    d["pos"] += size
    return [pool[i] for i in idx]


@register("reflect")
class Reflect(LLMMethod):
    """GEPA-style reflection on failures with textual feedback, Pareto-frontier parents, merges."""

    smoke = {"steps": 2, "minibatch": 3, "merge_every": 2, "dev_examples": 8}

    @dataclass
    class Config(LLMConfig):
        steps: int = field(default=6, metadata={"help": "reflection (or merge) steps"})
        temperature: float = field(default=0.7, metadata={"help": "sampling temperature of the optimizer model"})
        minibatch: int = field(default=4, metadata={"help": "training examples the parent answers per reflection"})
        proposals: int = field(default=2, metadata={"help": "new instructions sampled per reflection"})
        merge_every: int = field(default=3, metadata={"help": "every N-th step merges two frontier candidates (0 = never)"})
        tries: int = field(default=3, metadata={"help": "minibatches tried to find a failure before giving up the step"})

        def __post_init__(self):
            super().__post_init__()
            if self.minibatch < 1 or self.proposals < 1 or self.tries < 1 or self.merge_every < 0:
                raise ValueError("minibatch, proposals and tries must be >= 1, merge_every >= 0")

    def propose(self, state):
        c = self.config
        front = pareto_front(state)
        state.data["front"] = front
        if c.merge_every and state.step % c.merge_every == 0:
            pair = complementary_pair(state, front)
            if pair:
                return self.merge(state, *pair)
        keys = list(front)
        parent = state.rng.choices(keys, weights=[front[k] for k in keys])[0]
        prompt = state.prompts[parent]
        for _ in range(c.tries):
            batch = next_minibatch(state, c.minibatch)
            records = state.score(prompt, batch)
            if any(r["score"] < 1 for r in records):
                break
        else:
            state.skip("no-failures")
            return []
        notes = "\n\n".join(f"Input: {short(r['input'])}\nAnswer: {answer(state.task, r['pred'])}\n"
                            f"Feedback: {feedback(state.task, r)}" for r in records)
        out = []
        for text in propose(state, "reflect", {"prompt": instruction_of(prompt), "feedback": notes}, n=c.proposals,
                            temperature=c.temperature, fmt=c.proposer_format, seen=tried(state)):
            child = with_instruction(prompt, text)
            # GEPA's gate: only a child that beats its parent on the reflected minibatch is scored on dev
            if sum(r["score"] for r in state.score(child, batch)) > sum(r["score"] for r in records):
                out.append(Candidate(child, origin="reflect", parent=parent))
            else:
                state.skip("no-minibatch-gain")
        return out

    def merge(self, state: SearchState, a: str, b: str) -> list[Candidate]:
        c = self.config
        pa, pb = state.prompts[a], state.prompts[b]
        texts = propose(state, "merge", {"prompt1": instruction_of(pa), "prompt2": instruction_of(pb)}, n=1,
                        temperature=c.temperature, fmt=c.proposer_format, seen=tried(state))
        return [Candidate(with_instruction(pa, t), origin="merge", parent=a) for t in texts]

    def optimizer_calls_per_step(self) -> int:
        return self.config.proposals

    def per_step(self, state):
        c = self.config
        return c.proposals, c.tries * c.minibatch + c.proposals * c.minibatch
