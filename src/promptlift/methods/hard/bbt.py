"""BBT: Sun et al. 2022, "Black-Box Tuning for Language-Model-as-a-Service" (ICML 2022).

A soft prompt of k vectors is searched in a d-dimensional subspace:
embeds = p0 + (A z).view(k, hidden), with p0 the embeddings of the starting
tokens and A (k·hidden, d) a fixed random projection drawn from the run's seed.
CMA-ES (Hansen 2016, the `cma` package) searches z with forward passes and
scores only, never a gradient. A's entries are N(0, σ²) with
σ = std(word embeddings) / (√d · sigma0), the scaling of BBTv2 (Sun et al.
2022, "BBTv2: Towards a Gradient-Free Future with Large Language Models"), so
that A z starts at the scale of the embeddings whatever d is.

Fitness is the training loss (cross-entropy over the label words, as the paper;
or the error rate), scored by the engine on `train_examples` training examples,
never on dev. BBT is a search method on the shared ask/tell loop
(`engine.search`): each step asks CMA-ES for a population, scores it on train
(target calls, one per example scored), tells CMA-ES, and proposes the
population's best; the loop scores that candidate on dev and keeps the best on
dev (the paper's model selection), and owns the budget, checkpoints and resume.
The CMA-ES state is rebuilt on resume by replaying the recorded fitness values
(its sampling uses its own seeded generator, so the replay is exact).

Candidates travel through the loop as `SubspacePrompt` (z, the seed of A and
the starting tokens: JSON only, so the loop's checkpoint holds them); the
result is the `SoftPrompt` the best one stands for.

Defaults are sized for a CPU: d = 50, 10 tokens, population 8, 12 generations,
fitness on 16 training examples (1,952 examples scored with SmolLM2-135M on
SST-2's 32/32 split; the paper used d = 500, 50 tokens, population 20 and
8,000 calls of the whole training set). See bench/discrete.py for timings.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from functools import lru_cache
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ...artifacts import POSITIONS, Prompt, SoftPrompt, register_type
from ...engine.apply import Applier, applier_for, applies
from ...engine.evaluate import classify_scores
from ...engine.search import Candidate, SearchSettings, SearchState, dev_subset
from ...errors import ConfigError
from ...lm.base import model_key
from ...registry import register
from ..base import Method
from ..soft.common import INITS, init_token_ids
from .common import instruction_of, run_search

FITNESS = ("ce", "error")


@register_type
@dataclass
class SubspacePrompt(Prompt):
    """A soft prompt given by its coordinates z in a fixed random subspace around starting tokens.

    embeds (k, hidden) = embed(init_ids) + scale * (A z).view(k, hidden), A (k*hidden, d) ~ N(0, 1)
    drawn from `seed` (`projection`). Local model only, like the soft prompt it stands for.
    """

    type: ClassVar[str] = "subspace"
    z: list[float] = field(default_factory=list)
    seed: int = 0
    scale: float = 1.0
    init_ids: list[int] = field(default_factory=list)
    instruction: str = ""
    position: str = "after_header"


@lru_cache(maxsize=2)
def projection(seed: int, rows: int, d: int) -> torch.Tensor:
    """(rows, d) standard normal matrix, the same for the same seed on every machine (CPU generator)."""
    return torch.randn(rows, d, generator=torch.Generator().manual_seed(seed))


def soft_prompt(p: SubspacePrompt, lm) -> SoftPrompt:
    """The SoftPrompt that `p` stands for on `lm`."""
    k, h = len(p.init_ids), lm.hidden_size
    with torch.no_grad():
        p0 = lm.embed(torch.tensor(p.init_ids, dtype=torch.long, device=lm.device)).float().cpu()  # (k, h)
        delta = projection(p.seed, k * h, len(p.z)) @ torch.tensor(p.z, dtype=torch.float32)  # (k*h,)
    return SoftPrompt(instruction=p.instruction, position=p.position, hidden_size=h, num_layers=lm.num_layers,
                      embeds=p0 + p.scale * delta.view(k, h), model=p.model, task=p.task)


@applies(SubspacePrompt)
class SubspaceApplier(Applier):
    """Applied as the soft prompt it stands for."""

    def check(self, prompt, backend, task):
        if not backend.white_box:
            raise ConfigError("a subspace prompt is soft vectors for one local model; an endpoint cannot take them")
        soft = soft_prompt(prompt, backend.lm)
        applier_for(soft).check(soft, backend, task)

    def condition(self, prompt, backend, task, inputs, answer_prefixes=None):
        soft = soft_prompt(prompt, backend.lm)
        return applier_for(soft).condition(soft, backend, task, inputs, answer_prefixes)


@dataclass
class BBTConfig:
    """BBT options: the soft prompt, the subspace, CMA-ES and the fitness."""

    tokens: int = field(default=10, metadata={"help": "number of soft prompt vectors k"})
    init: str = field(default="text", metadata={
        "help": "starting vectors p0: text (instruction tokens) | random | labels"})
    instruction: str = field(default="", metadata={
        "help": "instruction after the soft vectors; '' = task's, 'none' = no text"})
    position: str = field(default="after_header", metadata={"help": "after_header | prepend"})
    dim: int = field(default=50, metadata={"help": "dimension d of the searched subspace"})
    popsize: int = field(default=8, metadata={"help": "CMA-ES population per generation"})
    sigma: float = field(default=1.0, metadata={"help": "CMA-ES initial step size sigma0"})
    steps: int = field(default=12, metadata={"help": "CMA-ES generations"})
    fitness: str = field(default="ce", metadata={
        "help": "training objective: ce (label cross-entropy) | error (1 - accuracy)"})
    train_examples: int = field(default=16, metadata={
        "help": "training examples each candidate is scored on: N drawn once with a fixed seed (0 = all)"})
    dev_examples: int = field(default=0, metadata={
        "help": "dev examples the loop selects on: N drawn once with a fixed seed (0 = all)"})
    patience: int = field(default=0, metadata={
        "help": "stop after this many generations without a better prompt on dev"})

    def __post_init__(self):
        if self.tokens < 1 or self.dim < 1 or self.popsize < 2 or self.steps < 0:
            raise ValueError("tokens and dim must be >= 1, popsize >= 2, steps >= 0")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {', '.join(POSITIONS)}, got {self.position!r}")
        if self.fitness not in FITNESS:
            raise ValueError(f"fitness must be one of {', '.join(FITNESS)}, got {self.fitness!r}")
        if self.train_examples < 0 or self.dev_examples < 0 or self.patience < 0:
            raise ValueError("train_examples, dev_examples and patience must be >= 0")


class BBTSearch:
    """One BBT run as the loop's method; the CMA-ES object lives here, its history in `state.data`."""

    def __init__(self, name: str, config: BBTConfig, lm, task, seed: int):
        self.name, self.config, self.lm, self.task, self.seed = name, config, lm, task, seed
        c = config
        self.instruction = instruction_of(c.instruction, task)
        self.init_ids = init_token_ids(lm, task, c.init, c.tokens, random.Random(seed), self.instruction)
        with torch.no_grad():  # the spread of the model's word embeddings (a sample of the vocabulary)
            sample = lm.embed(torch.arange(min(5000, lm.embedding_matrix().shape[0]), device=lm.device)).float()
        self.scale = float(sample.std()) / (math.sqrt(c.dim) * c.sigma)
        self.fit_examples = dev_subset(task.train, c.train_examples)
        self.gold = torch.tensor([task.label_names.index(ex.output) for ex in self.fit_examples])
        self.es = None

    # --- what the loop asks ----------------------------------------------------------------
    def search_settings(self) -> SearchSettings:
        c = self.config
        return SearchSettings(steps=c.steps, selection="full", dev_examples=c.dev_examples, patience=c.patience)

    def initial(self, state: SearchState):
        return [self.candidate(np.zeros(self.config.dim))]

    def propose(self, state: SearchState) -> list[Candidate]:
        es = self.strategy(state)
        xs = es.ask()  # popsize arrays (d,)
        fit = [state.target_call(lambda: self.fitness(self.candidate(x)), len(self.fit_examples)) for x in xs]
        es.tell(xs, fit)
        state.data.setdefault("fitness", []).append(fit)
        stop = {k: v for k, v in es.stop().items() if k != "maxiter"}
        if stop:
            state.finish("cma-es: " + ", ".join(stop))
        best = int(np.argmin(fit))
        return [Candidate(self.candidate(xs[best]), origin=f"generation {len(state.data['fitness'])}")]

    def update(self, state: SearchState, scored) -> None:
        """Nothing: CMA-ES learnt from the training fitness in `propose`; the loop keeps the dev scores."""

    def estimate(self, state: SearchState) -> dict:
        c = self.config
        return {"target_calls": len(state.dev) + c.steps * (c.popsize * len(self.fit_examples) + len(state.dev)),
                "optimizer_calls": 0}

    # --- CMA-ES, candidates, fitness ---------------------------------------------------------
    def strategy(self, state: SearchState):
        """The CMA-ES object after the generations recorded in `state.data` (replayed after a resume)."""
        done = state.data.get("fitness", [])
        if self.es is None or self.es.countiter != len(done):
            import cma

            c = self.config
            rs = np.random.RandomState(self.seed)
            self.es = cma.CMAEvolutionStrategy(np.zeros(c.dim), c.sigma, {
                "popsize": c.popsize, "seed": np.nan, "randn": rs.randn, "verbose": -9, "verb_log": 0,
                "verb_disp": 0, "tolflatfitness": 10**9})
            for fit in done:
                self.es.tell(self.es.ask(), fit)
        return self.es

    def candidate(self, z) -> SubspacePrompt:
        return SubspacePrompt(z=[float(v) for v in z], seed=self.seed, scale=self.scale, init_ids=list(self.init_ids),
                              instruction=self.instruction, position=self.config.position, model=model_key(self.lm))

    def fitness(self, prompt: SubspacePrompt) -> float:
        """Training objective of `prompt` (lower is better), scored by the engine; no gradients."""
        scores = classify_scores(self.lm, self.task, prompt, self.fit_examples)  # (N, labels)
        if self.config.fitness == "ce":
            return float(F.cross_entropy(scores, self.gold))
        return float((scores.argmax(-1) != self.gold).float().mean())


@register("bbt")
class BBT(Method):
    """CMA-ES over a random low-dimensional subspace of soft prompts, forward passes only (Sun et al. 2022)."""

    family = "blackbox"
    white_box = True
    task_kinds = ("classification",)
    Config = BBTConfig
    smoke = {"steps": 2, "popsize": 3, "dim": 4, "tokens": 2}

    def fit(self, lm, task, ctx):
        run = BBTSearch(self.name, self.config, lm, task, ctx.seed)
        best = run_search(run, lm, task, ctx)
        soft = soft_prompt(best, lm)
        soft.meta = {**best.meta, "subspace": {"dim": len(best.z), "seed": best.seed, "z": best.z}}
        return soft
