"""PEZ: Wen et al. 2023, "Hard Prompts Made Easy: Gradient-Based Discrete Optimization for Prompt Tuning
and Discovery" (NeurIPS 2023).

Continuous prompt embeddings are kept, but every forward pass reads their
projection onto the nearest vocabulary embeddings (cosine by default, as the
paper's code; or L2). The gradient taken at the projected tokens updates the
continuous copy (straight-through), so the optimisation moves in continuous
space while the model only ever sees real tokens. The shared trainer runs the
loop; each epoch's dev score is the projected token prompt's, through the
engine, so the best epoch is chosen on the prompt that is shipped. The result
is a `TokenPrompt`. Defaults follow the paper: AdamW lr 0.1, weight decay 0.1.

The fixed instruction after the tokens is chosen before training (`instruction=auto`,
`common.best_body`): the random starting tokens followed by the task's instruction, and
followed by nothing, are scored on dev and the better is kept (ties: the task's). On SST-2
SmolLM2-135M scores 50.0 % on dev with the task's instruction and 65.6 % without; PEZ run with
the instruction reached 59-69 % dev, run without it 65.6 % (2026-11-25, one seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ...artifacts import TokenPrompt
from ...engine.apply import TokenApplier
from ...engine.soft import soft_prefix_kv
from ...engine.train import SoftModule, TrainConfig, check_loss, loss_option, train
from ...registry import register
from ..base import Method
from ..shared import (INSTRUCTION_HELP, TokenOptions, allowed_tokens, fixed_instruction, instruction_choices, start_ids,
                      token_prompt)
from .common import METRICS, best_body, nearest_tokens, vocab_embeddings


class PEZModule(SoftModule):
    """k continuous vectors; the model reads their nearest allowed tokens (straight-through gradient)."""

    def __init__(self, lm, init_ids: list[int], body: list[int], metric: str, allowed: torch.Tensor, demos=()):
        super().__init__()
        table = vocab_embeddings(lm)  # (V, hidden)
        self.register_buffer("table", table, persistent=False)  # not in checkpoints: the model's own
        self.register_buffer("allowed", allowed, persistent=False)
        self.embeds = nn.Parameter(table[torch.tensor(init_ids, device=table.device)].clone())  # (k, hidden)
        self.metric = metric
        self.body = list(body)
        self.demos = list(demos)
        self._lm = lm  # to decode the found ids in `to_prompt`

    def project(self) -> torch.Tensor:
        """(k,) ids of the nearest allowed tokens."""
        with torch.no_grad():
            return nearest_tokens(self.embeds, self.table, self.allowed, self.metric)

    def prefix(self, lm, layout, header):
        hard = self.table[self.project()]  # (k, hidden)
        x = self.embeds + (hard - self.embeds).detach()  # forward: the tokens; backward: into embeds
        return soft_prefix_kv(lm, layout, x, "after_header", -1, header)

    def to_prompt(self) -> TokenPrompt:
        return token_prompt(self._lm, self.project().tolist(), self.body, demos=self.demos)


@dataclass
class PEZConfig(TrainConfig, TokenOptions):
    """PEZ options: the tokens searched, the projection, and the shared trainer's."""

    init: str = field(default="random", metadata={
        "help": "starting tokens: random (readable vocabulary, as the paper) | text (the instruction's) | labels"})
    instruction: str = field(default="auto", metadata={"help": INSTRUCTION_HELP})
    metric: str = field(default="cosine", metadata={"help": "projection to the nearest token: cosine | l2"})
    lr: float = field(default=0.1, metadata={"help": "AdamW learning rate (paper: 0.1)"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (paper: 0.1)"})
    loss: str = loss_option()

    def __post_init__(self):
        TokenOptions.__post_init__(self)
        TrainConfig.__post_init__(self)
        check_loss(self.loss)
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")


@register("pez")
class PEZ(Method):
    """Continuous vectors projected to the nearest tokens in every forward pass (Wen et al. 2023)."""

    family = "hard"
    white_box = True
    Config = PEZConfig
    smoke = {"epochs": 2, "tokens": 2, "batch_size": 8}

    def fit(self, lm, task, ctx):
        c = self.config
        instruction = fixed_instruction(c.instruction, task)
        allowed = allowed_tokens(lm, c.vocab)
        init = start_ids(lm, task, c.init, c.tokens, ctx.rng(), instruction, allowed)
        body, demos = best_body(lm, task, init, instruction_choices(c.instruction, task, c.demos, ctx.seed), ctx)
        layout = TokenApplier.layout(lm, task.labels if task.is_classification else None, body, demos)
        torch.manual_seed(ctx.seed)
        module = PEZModule(lm, init, body, c.metric, allowed, demos)
        return train(module, lm, task, layout, c, ctx, loss=c.loss).prompt
