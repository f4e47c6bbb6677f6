"""What every soft-prompt method shares: `fit` (the options and the starting vectors are in `methods/shared.py`).

A soft method only says how to build its `SoftModule`; `fit` builds the
layout, hands the module to the shared trainer and returns its artifact.
"""

from __future__ import annotations

import torch

from ...engine.train import SoftModule, train
from ...template import build_layout
from ..base import Method
from ..shared import SoftConfig, init_token_ids

class SoftMethod(Method):
    """Base of the soft-prompt methods: subclasses implement `build(lm, task, layout, init_ids)`."""

    family = "soft"
    white_box = True
    takes = ("text",)  # a pipeline's earlier instruction: the text after the vectors and their initial tokens
    makes = "soft"
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
        result = train(module, lm, task, layout, self.config, ctx, loss=self.config.loss)
        return result.prompt

