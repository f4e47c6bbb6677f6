"""Demonstration bootstrapping, after Khattab et al. 2024, "DSPy: Compiling Declarative Language Model Calls
into Self-Improving Pipelines" (ICLR 2024; BootstrapFewShot with random search).

Several demonstration sets are drawn and the best on dev is kept (selection by
successive halving by default; the zero-shot prompt competes too, so demonstrations
are only kept when they help). Where the demonstrations come from (`source`):

- `random`: class-balanced random training examples;
- `correct`: training examples the target model itself answers correctly with the
  starting prompt ("bootstrapped": the model is shown what it already gets right);
- `mixed` (default): trials alternate between the two, as DSPy's random search mixes
  bootstrapped and labelled-only sets. (Measured on SST-2 with SmolLM2-135M: its
  zero-shot prompt answers "negative" to everything, so `correct` alone yields only
  negative demonstrations.)

with `reasoning=true` (chain of thought) the prompt is a `Reasoning` prompt and each
demonstration carries the target's own reasoning for it, kept only where that
reasoning led to the right answer; `knn=true` adds a nearest-neighbour candidate
(per-input demonstrations from the same pool, TF-IDF, works on any endpoint).
Needs no optimizer model.
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field

from ...artifacts import KnnPrompt, Reasoning, TextPrompt
from ...engine.apply import applier_for
from ...engine.backends import backend_for
from ...engine.search import Candidate, SearchState
from ...lm.base import GenerationConfig
from ...registry import register
from ...task import Example
from .common import (DEMO_SOURCES, LLMConfig, LLMMethod, answer, correct_sample_size, demo_pool, draw,
                     instruction_of, start_key)

SOURCES = (*DEMO_SOURCES, "mixed")


def reasoned(state: SearchState, prompt: Reasoning, demos: list[Example]) -> list[Example]:
    """`demos` with the target's own reasoning before each answer (one target call each)."""
    inputs = [d.input for d in demos]

    def run():
        return applier_for(prompt).reasons(prompt, backend_for(state.target), state.task, inputs, GenerationConfig())

    reasons = state.target_call(run, len(demos))
    return [Example(d.input, f"{prompt.trigger} {r.strip()}\n{prompt.answer_trigger} {answer(state.task, d.output)}.")
            for d, r in zip(demos, reasons)]


@register("bootstrap-fewshot")
class BootstrapFewShot(LLMMethod):
    """Demonstration sets (random, or ones the target gets right; with its own reasoning under CoT), best on dev."""

    smoke = {"shots": 2, "trials": 2, "dev_examples": 8}

    @dataclass
    class Config(LLMConfig):
        steps: int = field(default=1, metadata={"help": "search steps (one draws every candidate set)"})
        selection: str = field(default="halving", metadata={"help": "candidate selection: full | ucb | halving"})
        demos: int = field(default=0, metadata={"help": "(not used: bootstrap-fewshot draws `shots` itself)"})
        shots: int = field(default=4, metadata={"help": "demonstrations per prompt"})
        trials: int = field(default=6, metadata={"help": "demonstration sets drawn and compared on dev"})
        source: str = field(default="mixed", metadata={
            "help": "random (any training examples) | correct (ones the target answers correctly) | "
                    "mixed (trials alternate between the two)"})
        reasoning: bool = field(default=False, metadata={
            "help": "chain of thought: demonstrations carry the target's own reasoning"})
        knn: bool = field(default=False, metadata={"help": "also try nearest-neighbour demonstrations (TF-IDF)"})

        def __post_init__(self):
            super().__post_init__()
            if self.shots < 1 or self.trials < 1:
                raise ValueError("shots and trials must be >= 1")
            if self.source not in SOURCES:
                raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
            if self.demos:
                raise ValueError("bootstrap-fewshot chooses its demonstrations itself: use shots, not demos")

    def propose(self, state):
        c = self.config
        state.finish("done")  # one step draws every candidate
        base = state.prompts[start_key(state)]
        if not state.train:
            state.skip("no-train-examples")
            return []
        kinds = DEMO_SOURCES if c.source == "mixed" else (c.source,)
        pools = {k: demo_pool(state, base, k, c.shots) for k in kinds}
        out = []
        for t in range(c.trials):
            kind = kinds[t % len(kinds)]
            demos = draw(state, pools[kind], c.shots, state.rng)
            if isinstance(base, Reasoning):
                demos = reasoned(state, base, demos)
                prompt = dataclasses.replace(base, inner=TextPrompt(instruction=instruction_of(base), demos=demos), meta={})
            else:
                prompt = TextPrompt(instruction=instruction_of(base), demos=demos)
            out.append(Candidate(prompt, origin=f"demos:{kind}"))
        if c.knn and not isinstance(base, Reasoning):
            kind = kinds[0]
            out.append(Candidate(KnnPrompt(instruction=instruction_of(base), pool=pools[kind],
                                           k=min(c.shots, len(pools[kind])), embedder="tfidf"), origin=f"knn:{kind}"))
        return out

    def per_step(self, state):
        c = self.config
        n_scored = min(len(state.train), correct_sample_size(c.shots))
        extra = (n_scored if c.source != "random" else 0) + (c.trials * c.shots if c.reasoning else 0)
        return c.trials + int(c.knn), extra
