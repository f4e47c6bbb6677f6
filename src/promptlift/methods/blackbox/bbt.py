"""BBT: Sun et al. 2022, "Black-Box Tuning for Language-Model-as-a-Service" (ICML 2022).

A soft prompt of k vectors is searched in a d-dimensional subspace:
embeds = p0 + (A z).view(k, hidden), with p0 the embeddings of the starting
tokens and A (k·hidden, d) a fixed random projection drawn from the run's seed.
CMA-ES (Hansen 2016, the `cma` package) searches z with forward passes and
scores only, never a gradient. A's entries are N(0, σ²) with
σ = alpha · std(word embeddings) / (√d · sigma0), the scaling of BBTv2 (Sun
et al. 2022, "BBTv2: Towards a Gradient-Free Future with Large Language
Models"), so that A z starts at the scale of the embeddings whatever d is.

The start (z = 0) has the starting tokens' vectors, then a fixed part: an
instruction, and optionally `demos` training examples as earlier turns (the
artifact's `demos`). By default (`instruction=auto`) the task's instruction,
none, and the task's instruction with `demos` examples are each scored on dev
and the best is kept for the search (ties: that order), as the token methods
do (`shared.instruction_choices`). A small model can be hurt by an
instruction: on SST-2 SmolLM2-135M scores 50.0 % on dev with the task's
instruction and 65.6 % without one (its test accuracies are 47.7 and 70.3 %),
and BBT from the task's instruction reached 56.2 % dev against 71.9 % from
none (seed 0). On a generation task it answers in the task's format only once
it sees examples. `auto` makes that choice per task, on dev, at the cost of
two more dev evaluations. Measured with SmolLM2-135M (bench/DISCRETE_RESULTS.md,
2026-12-05; test scored once, after the choice): on singular_to_plural every
seed keeps the examples, 57 / 61 / 62 % on test against 2-3 % when BBT could
choose only between the instruction and none; on SST-2 seed 0 keeps them (dev
68.8 % against 62.5 % for none) and scores 79.9 % on the full test, seeds 1
and 2 keep none.

Fitness is the training loss (cross-entropy over the label words, as the paper,
or the error rate; for a generation task minus the reference output's
log-probability, `engine.evaluate.example_losses`), scored by the engine on `train_examples` training examples,
never on dev. BBT is a search method on the shared ask/tell loop
(`engine.search`): each step asks CMA-ES for a population, scores it on train
(target calls, one per example scored), tells CMA-ES, and proposes the
population's best; the loop scores that candidate on dev and keeps the best on
dev (the paper's model selection), and owns the budget, checkpoints and resume.
Candidates are the `SoftPrompt`s themselves (their z in `meta["subspace"]`); the
loop checkpoints them as artifacts. The CMA-ES state is rebuilt on resume by
replaying the recorded fitness values (its sampling uses its own seeded
generator, so the replay is exact).

`SubspaceSearch` is written for B blocks of coordinates, one CMA-ES each, run
one generation at a time in turn: BBT has one block, BBTv2 (`bbt_v2.py`) one
per layer. It holds what both share: the CMA-ES objects and their replay, the
fitness, the proposals and the cost estimate.

Defaults are sized for a CPU: d = 50, 10 tokens, population 8, 12 generations,
fitness on 16 training examples (1,984 examples scored with SmolLM2-135M on
SST-2's 32/32 split; the paper used d = 500, 50 tokens, population 20 and
8,000 calls of the whole training set). See bench/discrete.py for timings.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from ...artifacts import POSITIONS, Prompt, SoftPrompt
from ...engine.evaluate import classify_scores, example_losses
from ...engine.search import Candidate, SearchSettings, SearchState, dev_subset, search
from ...errors import ConfigError
from ...lm.base import model_key
from ...registry import register
from ..base import Method
from ..shared import INITS, INSTRUCTION_HELP, Fixed, init_token_ids, instruction_choices

FITNESS = ("ce", "error")


@lru_cache(maxsize=2)
def projection(seed: int, rows: int, d: int) -> torch.Tensor:
    """(rows, d) standard normal matrix, the same for the same seed on every machine (CPU generator)."""
    return torch.randn(rows, d, generator=torch.Generator().manual_seed(seed))


def embedding_std(lm) -> float:
    """Spread of the model's word embeddings (over the first 5,000 ids)."""
    with torch.no_grad():
        sample = lm.embed(torch.arange(min(5000, lm.embedding_matrix().shape[0]), device=lm.device)).float()
    return float(sample.std())


def cma_strategy(dim: int, sigma: float, popsize: int, seed: int, history: list[list[float]]):
    """A CMA-ES at z = 0 sampling from its own generator (seeded by `seed`), after replaying `history`.

    history: the fitness values of each generation already told. CMA-ES's proposals depend only on
    its generator and the fitness values it was told, so asking again and telling the same values
    rebuilds the exact state of a run that was stopped.
    """
    import cma

    rs = np.random.RandomState(seed)
    es = cma.CMAEvolutionStrategy(np.zeros(dim), sigma, {
        "popsize": popsize, "seed": np.nan, "randn": rs.randn, "verbose": -9, "verb_log": 0,
        "verb_disp": 0, "tolflatfitness": 10**9})
    for fit in history:
        es.tell(es.ask(), fit)
    return es


def task_loss(lm, task, prompt: Prompt, examples, kind: str) -> float:
    """Training objective of `prompt` on `examples` (lower is better), from scores only, no gradients.

    kind: "ce": the mean of `engine.evaluate.example_losses` (cross-entropy over the label words;
    generation: minus the reference output's log-probability) | "error" (1 - accuracy; classification).
    """
    if kind == "ce":
        return float(example_losses(lm, task, prompt, examples).mean())
    gold = torch.tensor([task.label_names.index(ex.output) for ex in examples])
    scores = classify_scores(lm, task, prompt, examples)  # (N, labels)
    return float((scores.argmax(-1) != gold).float().mean())


@dataclass
class BBTConfig:
    """BBT options: the soft prompt, the subspace, CMA-ES and the fitness."""

    tokens: int = field(default=10, metadata={"help": "number of soft prompt vectors k"})
    init: str = field(default="text", metadata={
        "help": "starting vectors p0: text (instruction tokens) | random | labels"})
    instruction: str = field(default="auto", metadata={
        "help": INSTRUCTION_HELP.replace("searched tokens", "soft vectors").replace("starting tokens", "start (z = 0)")})
    demos: int = field(default=4, metadata={
        "help": "training examples kept after the instruction by instruction=demos (and tried by auto); 0 = none"})
    position: str = field(default="after_header", metadata={"help": "after_header | prepend"})
    dim: int = field(default=50, metadata={"help": "dimension d of the searched subspace"})
    popsize: int = field(default=8, metadata={"help": "CMA-ES population per generation"})
    sigma: float = field(default=1.0, metadata={
        "help": "CMA-ES initial step size sigma0 (A is scaled by 1/sigma0, so this sets z's scale only)"})
    alpha: float = field(default=1.0, metadata={
        "help": "scale of A: a first-generation step A z is about alpha x the spread of what it is added to"})
    steps: int = field(default=12, metadata={"help": "CMA-ES generations"})
    fitness: str = field(default="ce", metadata={
        "help": "training objective: ce (label cross-entropy; generation: minus the reference's log-probability) "
                "| error (1 - accuracy; classification)"})
    train_examples: int = field(default=16, metadata={
        "help": "training examples each candidate is scored on: N drawn once with a fixed seed (0 = all)"})
    dev_examples: int = field(default=0, metadata={
        "help": "dev examples the loop selects on: N drawn once with a fixed seed (0 = all)"})
    patience: int = field(default=0, metadata={
        "help": "stop after this many generations without a better prompt on dev"})

    def __post_init__(self):
        if self.tokens < 1 or self.dim < 1 or self.popsize < 2 or self.steps < 0:
            raise ValueError("tokens and dim must be >= 1, popsize >= 2, steps >= 0")
        if not self.sigma > 0 or not self.alpha > 0:
            raise ValueError(f"sigma and alpha must be > 0, got {self.sigma}, {self.alpha}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {', '.join(POSITIONS)}, got {self.position!r}")
        if self.fitness not in FITNESS:
            raise ValueError(f"fitness must be one of {', '.join(FITNESS)}, got {self.fitness!r}")
        if self.train_examples < 0 or self.dev_examples < 0 or self.patience < 0 or self.demos < 0:
            raise ValueError("train_examples, dev_examples, patience and demos must be >= 0")


class SubspaceSearch:
    """CMA-ES over `blocks` blocks of subspace coordinates, one generation of one block per step, in turn.

    Subclasses say what a point is: `prompt(zs)` (the artifact for every block's z) and set
    `blocks`. With one block (BBT) each step proposes its generation's best. With more
    (BBTv2), the blocks not being optimised stay fixed at their current z
    (`state.data["z"]`, zeros at the start), and a block moves to its generation's best only
    if that lowers the training loss of the current prompt (`state.data["loss"]`); each step
    proposes the current prompt. The fitness of every generation is in
    `state.data["fitness"]` (generation g belongs to block g % blocks); CMA-ES objects live
    here and are rebuilt from that record after a resume. The kept start (an index into
    `self.fixed`) is `state.data["fixed"]`; `self.start` is the one in use.
    """

    blocks: int = 1

    def __init__(self, name: str, config: BBTConfig, lm, task, seed: int):
        self.name, self.config, self.lm, self.task, self.seed = name, config, lm, task, seed
        c = config
        self.fixed: list[Fixed] = instruction_choices(c.instruction, task, c.demos, seed)  # auto: each start on dev
        self.start = self.fixed[0]
        self.init_ids = init_token_ids(lm, task, c.init, c.tokens, random.Random(seed), self.start.instruction)
        if c.fitness == "error" and not task.is_classification:
            raise ConfigError("fitness=error needs a classification task (generation: fitness=ce, minus the "
                              "reference output's log-probability)")
        self.fit_examples = dev_subset(task.train, c.train_examples)
        self.es: dict[int, object] = {}

    def prompt(self, zs: list[list[float]]) -> Prompt:
        """The artifact at coordinates `zs` (one list of d floats per block)."""
        raise NotImplementedError

    # --- what the loop asks ----------------------------------------------------------------
    def search_settings(self) -> SearchSettings:
        c = self.config
        return SearchSettings(steps=c.steps, selection="full", dev_examples=c.dev_examples, patience=c.patience)

    def initial(self, state: SearchState):
        out = []
        for f in self.fixed:
            self.start = f
            out.append(self.prompt(self.current(state)))
        self.start = self.fixed[0]
        return out

    def propose(self, state: SearchState) -> list[Candidate]:
        self.start = self.fixed[self.kept(state)]
        history = state.data.setdefault("fitness", [])
        g = len(history)
        b = g % self.blocks
        es = self.strategy(state, b)
        zs = self.current(state)
        n = len(self.fit_examples)
        if self.blocks > 1 and "loss" not in state.data:  # the training loss of the start, once
            state.data["loss"] = state.target_call(lambda: self.fitness(self.prompt(zs)), n)
        xs = es.ask()  # popsize arrays (d,)
        fit = [state.target_call(lambda: self.fitness(self.prompt(_with(zs, b, x))), n) for x in xs]
        es.tell(xs, fit)
        history.append(fit)
        stop = {k: v for k, v in es.stop().items() if k != "maxiter"}
        if stop:
            state.data.setdefault("stopped", {})[str(b)] = ", ".join(stop)
            if len(state.data["stopped"]) == self.blocks:
                state.finish("cma-es: " + "; ".join(sorted(set(state.data["stopped"].values()))))
        best = int(np.argmin(fit))
        if self.blocks == 1:  # BBT: the generation's best
            zs = _with(zs, b, xs[best])
        elif fit[best] < state.data["loss"]:  # BBTv2: the block moves only if that lowers the training loss
            zs = _with(zs, b, xs[best])
            state.data["z"], state.data["loss"] = zs, fit[best]
        where = f" (block {b + 1}/{self.blocks})" if self.blocks > 1 else ""
        return [Candidate(self.prompt(zs), origin=f"generation {g + 1}{where}")]

    def update(self, state: SearchState, scored) -> None:
        """After the start: keep the fixed part of the best starting prompt on dev (`scored` is best first).

        Otherwise nothing: CMA-ES learnt from the training fitness in `propose`; the loop keeps the dev scores.
        """
        if "fixed" not in state.data and scored:
            p = scored[0].prompt
            state.data["fixed"] = next((i for i, f in enumerate(self.fixed) if f.instruction == p.instruction
                                        and f.demos == list(p.demos)), 0)

    def kept(self, state: SearchState) -> int:
        """Index of the kept start in `self.fixed` (0 before the starts are scored)."""
        return int(state.data.get("fixed", 0))

    def estimate(self, state: SearchState) -> dict:
        """At most: the starts on dev, the start's training loss (BBTv2), each generation on train and its pick on dev."""
        c = self.config
        dev, n = len(state.dev), len(self.fit_examples)
        return {"target_calls": len(self.fixed) * dev + (n if self.blocks > 1 else 0)
                + c.steps * (c.popsize * n + dev), "optimizer_calls": 0}

    # --- CMA-ES, coordinates, fitness --------------------------------------------------------
    def current(self, state: SearchState) -> list[list[float]]:
        """Every block's current z (zeros before its first generation)."""
        return state.data.get("z") or [[0.0] * self.config.dim for _ in range(self.blocks)]

    def strategy(self, state: SearchState, block: int = 0):
        """Block `block`'s CMA-ES after the generations recorded in `state.data` (replayed after a resume)."""
        done = state.data.get("fitness", [])[block :: self.blocks]
        es = self.es.get(block)
        if es is None or es.countiter != len(done):
            c = self.config
            # block 0 samples from the run's seed (BBT), the others from their own seeds
            es = self.es[block] = cma_strategy(c.dim, c.sigma, c.popsize, self.seed + 10007 * block, done)
        return es

    def fitness(self, prompt: Prompt) -> float:
        """Training objective of `prompt` (lower is better), scored by the engine; no gradients."""
        return task_loss(self.lm, self.task, prompt, self.fit_examples, self.config.fitness)


def _with(zs: list[list[float]], block: int, x) -> list[list[float]]:
    """`zs` with block `block` replaced by `x` (as plain floats)."""
    out = list(zs)
    out[block] = [float(v) for v in x]
    return out


class BBTSearch(SubspaceSearch):
    """One BBT run as the loop's method: one block, z -> a SoftPrompt around the starting tokens."""

    def __init__(self, name: str, config: BBTConfig, lm, task, seed: int):
        super().__init__(name, config, lm, task, seed)
        self.scale = config.alpha * embedding_std(lm) / (math.sqrt(config.dim) * config.sigma)
        with torch.no_grad():
            self.p0 = lm.embed(torch.tensor(self.init_ids, dtype=torch.long, device=lm.device)).float().cpu()  # (k, h)

    def prompt(self, zs) -> SoftPrompt:
        z = zs[0]
        k, h = len(self.init_ids), self.lm.hidden_size
        with torch.no_grad():
            delta = projection(self.seed, k * h, len(z)) @ torch.tensor(z, dtype=torch.float32)  # (k*h,)
        return SoftPrompt(instruction=self.start.instruction, demos=list(self.start.demos),
                          position=self.config.position, hidden_size=h,
                          num_layers=self.lm.num_layers, embeds=self.p0 + self.scale * delta.view(k, h),
                          model=model_key(self.lm), meta={"subspace": {"dim": len(z), "seed": self.seed, "z": z}})


@register("bbt")
class BBT(Method):
    """CMA-ES over a random low-dimensional subspace of soft prompts, forward passes only (Sun et al. 2022)."""

    family = "blackbox"
    white_box = True
    Config = BBTConfig
    smoke = {"steps": 2, "popsize": 3, "dim": 4, "tokens": 2}

    def fit(self, lm, task, ctx):
        return search(BBTSearch(self.name, self.config, lm, task, ctx.seed), lm, task, ctx)
