"""EvoPrompt: Guo et al. 2024, "Connecting Large Language Models with Evolutionary Algorithms Yields Powerful
Prompt Optimizers" (ICLR 2024).

A population of instructions evolves by operators the optimizer model carries out
in words. `ga`: two parents drawn by roulette wheel on their dev scores are crossed
over and mutated into a child; the population keeps the best `population` of parents
and children. `de`: for each member, the words in which two other members differ
are mutated and merged into the best member, and the child replaces that member if
it scores better. The first step fills the population with paraphrases of the
starting instruction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...engine.search import Candidate, SearchState
from ...registry import register
from .common import LLMConfig, LLMMethod, instruction_of, propose, tried, with_instruction

VARIANTS = ("ga", "de")


def roulette(state: SearchState, keys: list[str], scores: dict, k: int) -> list[str]:
    """k distinct members drawn with probability proportional to their score (a small floor keeps zeros drawable)."""
    pool, out = list(keys), []
    for _ in range(min(k, len(pool))):
        pick = state.rng.choices(pool, weights=[scores[x] + 1e-3 for x in pool])[0]
        out.append(pick)
        pool.remove(pick)
    return out


@register("evoprompt")
class EvoPrompt(LLMMethod):
    """Genetic (ga) or differential-evolution (de) operators, carried out by the optimizer model."""

    smoke = {"steps": 2, "population": 2, "dev_examples": 8}

    @dataclass
    class Config(LLMConfig):
        steps: int = field(default=4, metadata={"help": "generations (the first fills the population)"})
        population: int = field(default=4, metadata={"help": "population size"})
        variant: str = field(default="ga", metadata={"help": "ga (crossover + mutation) | de (differential evolution)"})

        def __post_init__(self):
            super().__post_init__()
            if self.population < 2:
                raise ValueError("population must be >= 2")
            if self.variant not in VARIANTS:
                raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")

    def propose(self, state):
        c, d = self.config, state.data
        pop, scores = d["population"], d["scores"]
        d["pending"] = {}
        fmt, temp = c.proposer_format, c.temperature
        if len(pop) < c.population:
            base = state.prompts[pop[0]]
            texts = propose(state, "paraphrase", {"instruction": instruction_of(base)}, n=c.population - len(pop),
                            temperature=temp, fmt=fmt, seen=tried(state))
            return [Candidate(with_instruction(base, t), origin="init", parent=pop[0]) for t in texts]
        out: list[Candidate] = []
        best = max(pop, key=lambda k: scores[k])
        for i, target in enumerate(pop):
            seen = tried(state) + [instruction_of(x.prompt) for x in out]
            if c.variant == "ga":
                p1, p2 = roulette(state, pop, scores, 2)
                texts = propose(state, "evo_ga", {"prompt1": instruction_of(state.prompts[p1]),
                                                  "prompt2": instruction_of(state.prompts[p2])},
                                n=1, temperature=temp, fmt=fmt, seen=seen)
                parent = p1
            else:
                a, b = state.rng.sample([k for k in pop if k != target] or pop, 2) if len(pop) > 2 else (pop[0], pop[1])
                texts = propose(state, "evo_de", {"prompt_a": instruction_of(state.prompts[a]),
                                                  "prompt_b": instruction_of(state.prompts[b]),
                                                  "best": instruction_of(state.prompts[best])},
                                n=1, temperature=temp, fmt=fmt, seen=seen)
                parent = target
            for t in texts:
                cand = Candidate(with_instruction(state.prompts[parent], t), origin=c.variant, parent=parent)
                d["pending"][cand.prompt.hash] = i
                out.append(cand)
        return out

    def update(self, state, scored):
        c, d = self.config, state.data
        if "population" not in d:
            d["population"], d["scores"] = [scored[0].key], {scored[0].key: scored[0].score}
            return
        for r in scored:
            d["scores"][r.key] = r.score
        pop = d["population"]
        if len(pop) < c.population or c.variant == "ga":
            merged = list(dict.fromkeys(pop + [r.key for r in scored]))
            d["population"] = sorted(merged, key=lambda k: -d["scores"][k])[: c.population]
        else:  # de: a child replaces its target member only if it is better
            for r in scored:
                i = d["pending"].get(r.key)
                if i is not None and r.score > d["scores"][pop[i]]:
                    pop[i] = r.key
        d["pending"] = {}

    def optimizer_calls_per_step(self) -> int:
        return self.config.population
