"""BBTv2: Sun et al. 2022, "BBTv2: Towards a Gradient-Free Future with Large Language Models" (EMNLP 2022).

Deep prompts searched with forward passes and scores only. Every layer l has
its own prompt, here the layer's key/value prefix (a `PrefixPrompt`, as
P-tuning v2 trains with gradients):

    keys_l, values_l = p0_l + (A_l z_l) reshaped,   z_l in R^d,

with p0_l the keys/values the model computes for the starting tokens and A_l
a fixed random projection per layer drawn from the run's seed. A_l's entries
are N(0, σ_l²) with σ_l = std_l / (√d · sigma0), std_l the spread of the
model's keys (for the key rows) and values (for the value rows) at layer l on
the starting tokens and a few training inputs: the paper's normal projection
scaled by the hidden states' std, so that A_l z_l starts at the scale of what
it is added to, at every layer and whatever d is.

Divide and conquer (the paper's section 3.3): one CMA-ES per layer; each step
runs one generation of one layer's CMA-ES, cycling over the layers from the
bottom, with every other layer fixed at its current z (zero at the start).
Fitness is the training loss (label cross-entropy, or the error rate) on
`train_examples` training examples. One departure from the paper, which fixes
each layer at the best sample its CMA-ES has seen: a layer moves to its
generation's best sample only if that lowers the training loss of the current
prompt. A CPU budget gives each layer's CMA-ES one or two generations, and
the best of so few samples is often worse than where the layer was. The loop
scores each step's prompt on dev, keeps the best on dev, and owns the budget,
checkpoints (the candidates are the PrefixPrompts, saved as artifacts) and
resume (each layer's CMA-ES is rebuilt by replaying its recorded fitness).
What BBT and BBTv2 share lives in `bbt.py` (`SubspaceSearch`): the options,
the start (`instruction=auto` picks the task's instruction, none, or the
task's with `demos` training examples, by dev accuracy at z = 0), CMA-ES and
its replay, the fitness.

Defaults (how chosen: see `BBTv2Config`) are sized for SmolLM2-135M (30
layers) on a 2-core CPU; the paper used d = 500, 50 tokens, population 20 and
8,000 calls of the whole training set on RoBERTa-large. Measured (SST-2,
seed 0, `bench/discrete.py --methods bbt-v2`): 3,408 examples scored, 351 s
of one CPU thread (1,119 s wall on a machine at load 7-13); the training loss of
each generation's best fell from 0.58 to 0.38 over the cycle while dev stayed at 71.9 %
from the second generation on (the no-instruction start: 65.6 %), so the loop
kept that early prompt: with 16 training examples the later layers overfit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ...artifacts import PrefixPrompt
from ...lm.base import model_key
from ...registry import register
from ..base import Method
from ...engine.search import search
from ..shared import init_kv
from .bbt import BBTConfig, SubspaceSearch, projection


@dataclass
class BBTv2Config(BBTConfig):
    """BBTv2 options: BBT's, for a prompt per layer; `steps` generations cycle over the layers.

    Defaults, sized by time: 5 tokens per layer, d = 10 per layer, population 6, 30 generations
    (one cycle over SmolLM2-135M's 30 layers), fitness on 16 training examples, selection on the
    whole dev split: at most 2 * 32 + 16 + 30 * (6 * 16 + 32) = 3,920 examples scored on SST-2's
    32/32 split (BBT's default: 1,984), about 0.11 s of one CPU thread each. Only train and dev
    numbers were looked at to choose them (the training loss and the dev accuracy of each
    generation, bench/DISCRETE_RESULTS.md), never test.
    """

    tokens: int = field(default=5, metadata={"help": "prompt length k at every layer (key/value pairs)"})
    dim: int = field(default=10, metadata={"help": "dimension d of each layer's searched subspace"})
    popsize: int = field(default=6, metadata={"help": "CMA-ES population per generation"})
    steps: int = field(default=30, metadata={
        "help": "CMA-ES generations in all, one layer each, cycling over the layers from the bottom"})


class BBTv2Search(SubspaceSearch):
    """One BBTv2 run as the loop's method: a block of coordinates per layer, z's -> a PrefixPrompt."""

    def __init__(self, name: str, config: BBTv2Config, lm, task, seed: int):
        super().__init__(name, config, lm, task, seed)
        self.blocks = lm.num_layers
        k0, v0 = init_kv(lm, self.init_ids)  # each (L, H, k, D)
        self.dtype = k0.dtype
        self.k0, self.v0 = k0.float().cpu(), v0.float().cpu()
        # the spread of keys and values at each layer, on the starting tokens and up to 8 training inputs
        sample = list(self.init_ids) + [t for ex in self.fit_examples[:8] for t in lm.encode(ex.input)]
        ks, vs = init_kv(lm, sample)
        per = math.sqrt(config.dim) * config.sigma / config.alpha
        self.key_scale = ks[:, :, 1:].float().cpu().flatten(1).std(1) / per  # (L,); position 0 is a sink
        self.value_scale = vs[:, :, 1:].float().cpu().flatten(1).std(1) / per

    def prompt(self, zs) -> PrefixPrompt:
        L, H, k, D = self.k0.shape
        rows = 2 * H * k * D
        A = projection(self.seed, L * rows, self.config.dim)  # (L * rows, d): A_l is rows l*rows .. (l+1)*rows
        keys, values = [], []
        with torch.no_grad():
            for layer, z in enumerate(zs):
                delta = (A[layer * rows:(layer + 1) * rows] @ torch.tensor(z, dtype=torch.float32)).view(2, H, k, D)
                keys.append(self.k0[layer] + self.key_scale[layer] * delta[0])
                values.append(self.v0[layer] + self.value_scale[layer] * delta[1])
        return PrefixPrompt(instruction=self.start.instruction, demos=list(self.start.demos),
                            position=self.config.position,
                            hidden_size=self.lm.hidden_size, num_layers=L, keys=torch.stack(keys).to(self.dtype),
                            values=torch.stack(values).to(self.dtype), model=model_key(self.lm),
                            meta={"subspace": {"dim": self.config.dim, "seed": self.seed, "z": zs}})


@register("bbt-v2")
class BBTv2(Method):
    """CMA-ES per layer over random subspaces of deep (key/value) prompts, forward passes only (Sun et al. 2022)."""

    family = "blackbox"
    white_box = True
    Config = BBTv2Config
    smoke = {"steps": 3, "popsize": 3, "dim": 4, "tokens": 2}

    def fit(self, lm, task, ctx):
        return search(BBTv2Search(self.name, self.config, lm, task, ctx.seed), lm, task, ctx)
