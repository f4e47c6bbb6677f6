"""What every soft-prompt method shares: the options, initialisation of vectors, and `fit`.

A soft method only says how to build its `SoftModule`; `fit` builds the
layout, hands the module to the shared trainer and returns its artifact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from ...engine.train import SoftModule, TrainConfig, train
from ...errors import ConfigError
from ...artifacts import POSITIONS
from ...template import build_layout
from ..base import Method

INITS = ("random", "text", "labels")


@dataclass
class SoftConfig:
    """Options shared by every soft-prompt method (the trainer's and the prompt's)."""

    tokens: int = field(default=20, metadata={"help": "number of virtual tokens k"})
    init: str = field(default="text", metadata={"help": "text (instruction tokens) | random (vocabulary) | labels"})
    position: str = field(default="after_header", metadata={"help": "after_header | prepend"})
    instruction: str = field(default="", metadata={"help": "instruction after the soft tokens; '' = task's, 'none' = no text"})
    epochs: int = field(default=10, metadata={"help": "passes over train"})
    batch_size: int = field(default=8, metadata={"help": "examples per step"})
    lr: float = field(default=3e-2, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup: float = field(default=0.1, metadata={"help": "fraction of steps of linear warm-up"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0: off)"})
    patience: int = field(default=0, metadata={"help": "early stopping after N epochs without dev gain (0: off)"})
    loss: str = field(default="auto", metadata={"help": "auto | class (softmax over labels) | lm (gold tokens)"})

    def __post_init__(self):
        if self.tokens < 1:
            raise ValueError("tokens must be >= 1")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {', '.join(POSITIONS)}, got {self.position!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or not 0 <= self.warmup < 1 or self.grad_clip < 0 or self.patience < 0:
            raise ValueError("weight_decay, grad_clip and patience must be >= 0, warmup in [0, 1)")
        if self.loss not in ("auto", "class", "lm"):
            raise ValueError(f"loss must be auto, class or lm, got {self.loss!r}")

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                           warmup=self.warmup, grad_clip=self.grad_clip, patience=self.patience, loss=self.loss)


def init_token_ids(lm, task, how: str, k: int, rng: random.Random, instruction: str) -> list[int]:
    """k token ids to initialise soft vectors from (Lester et al. 2021, section 3.2).

    random: tokens sampled from the 5000 lowest ids (frequent merges in BPE vocabularies);
    text: the instruction's tokens, repeated to length k;
    labels: the label words' tokens, then random tokens.
    """
    vocab = lm.embedding_matrix().shape[0]
    special = set(lm.tokenizer.all_special_ids)
    pool = [i for i in range(min(vocab, 5000)) if i not in special]
    randoms = [rng.choice(pool) for _ in range(k)]
    if how == "random":
        return randoms
    if how == "text":
        ids = lm.encode(instruction or task.instruction)
        if not ids:
            raise ConfigError("init=text needs a non-empty instruction")
        return (ids * (k // len(ids) + 1))[:k]
    ids = [t for words in task.labels.values() for t in lm.encode(words)] if task.is_classification else []
    if not ids:
        ids = [t for ex in task.train[:8] for t in lm.encode(ex.output)]
    return (ids + randoms)[:k]


class SoftMethod(Method):
    """Base of the soft-prompt methods: subclasses implement `build(lm, task, layout, init_ids)`."""

    family = "soft"
    white_box = True
    Config = SoftConfig
    smoke = {"epochs": 2, "tokens": 2, "batch_size": 8}

    def instruction(self, task) -> str:
        ins = self.config.instruction
        return "" if ins == "none" else (ins or task.instruction)

    def build(self, lm, task, layout, init_ids: list[int]) -> SoftModule:
        """The method's trainable module, initialised from `init_ids`."""
        raise NotImplementedError(f"{type(self).__name__} must define build()")

    def fit(self, lm, task, ctx):
        instruction = self.instruction(task)
        layout = build_layout(lm, instruction, [], task.labels if task.is_classification else None)
        init_ids = init_token_ids(lm, task, self.config.init, self.config.tokens, ctx.rng(), instruction)
        torch.manual_seed(ctx.seed)
        module = self.build(lm, task, layout, init_ids)
        result = train(module, lm, task, layout, self.config.train_config(), ctx)
        return result.prompt


def init_kv(lm, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values the model computes for `ids`: each (layers, kv_heads, k, head_dim)."""
    with torch.no_grad():
        _, kv = lm.forward(ids=torch.tensor([ids], device=lm.device))
    return torch.stack([k[0] for k in kv.keys]), torch.stack([v[0] for v in kv.values])
