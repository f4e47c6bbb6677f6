"""Dynamic prompting: Yang et al. 2023, "Dynamic Prompting: A Unified Framework for Prompt Tuning".

A pool of soft prompts of different lengths and a light gate on the input that picks one per input:
during training a hard Gumbel-softmax sample with straight-through gradients (the loss is the picked
prompt's, the gate learns from every prompt's loss through the relaxation), at inference the argmax.
Built on the mixture machinery (`soft-mixture`): the pool is a `MixturePrompt` with `choose="argmax"`,
scored by `engine.mixture` in one batched pass; the gate is a linear layer on the input's mean token
embedding (the paper's light network reads the frozen model's representation of the input).

What of the paper this covers: the per-input choice of the prompt's LENGTH (the pool's members have the
lengths in `lengths`) and of a prompt from a POOL (repeat a length to have several prompts of it). It does
not cover the per-input choice of the prompt's POSITION relative to the input (the paper splits the prompt
into a part before and a part after the input): promptlift places soft vectors before the input only.

    promptlift optimize --method dynamic-prompting --data DIR -o lengths=5,10,20
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...engine.train import train
from ...registry import register
from ...template import build_layout
from ..shared import init_token_ids
from .common import SoftMethod
from .mixture import MixtureModule, MixtureOptions, member_scores, mixture_loss


@dataclass
class DynamicConfig(MixtureOptions):
    """The trainer's and prompt tuning's options, the gate's learning rate, the pool's lengths and the
    Gumbel-softmax temperature.

    Default pool: lengths tokens/4, tokens/2 and tokens (5, 10, 20 with the default 20 tokens), each from the
    `init` (the instruction's tokens by default); not swept on dev.
    """

    lengths: str = field(default="", metadata={
        "help": "vectors of each prompt in the pool, e.g. 5,10,20 (repeat a length for several prompts of it); "
                "'' = tokens/4, tokens/2, tokens"})
    tau: float = field(default=1.0, metadata={"help": "Gumbel-softmax temperature in training"})

    def __post_init__(self):
        super().__post_init__()
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        self.pool()

    def pool(self) -> list[int]:
        """The lengths of the pool's prompts."""
        if not self.lengths:
            return sorted({max(1, self.tokens // 4), max(1, self.tokens // 2), self.tokens})
        try:
            out = [int(x) for x in str(self.lengths).split(",")]
        except ValueError:
            raise ValueError(f"lengths must be comma-separated integers, got {self.lengths!r}") from None
        if not out or min(out) < 1:
            raise ValueError(f"lengths must be integers >= 1, got {self.lengths!r}")
        return out


class DynamicModule(MixtureModule):
    """A pool of soft prompts and an input gate; training picks one per input by a hard Gumbel-softmax sample."""

    choose = "argmax"

    def __init__(self, *args, tau: float = 1.0, **kw):
        super().__init__(*args, **kw)
        self.tau = tau

    def mix(self, member_logp: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The picked member's log-probabilities: sum_k g_k logp_k with g one-hot (straight-through in training)."""
        logits = self.log_weights(feats)  # (B, K)
        if self.training:
            g = F.gumbel_softmax(logits, tau=self.tau, hard=True)
        else:
            g = F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
        g = g.to(member_logp.dtype).reshape(*g.shape, *([1] * (member_logp.dim() - 2)))
        return (g * member_logp).sum(1)


@register("dynamic-prompting")
class DynamicPrompting(SoftMethod):
    """A pool of soft prompts of different lengths, one picked per input by a Gumbel-softmax gate (Yang et al. 2023)."""

    Config = DynamicConfig
    smoke = {"epochs": 2, "tokens": 4, "batch_size": 8}

    def fit(self, lm, task, ctx):
        c = self.config
        instruction = self.instruction(task)
        layout = build_layout(lm, instruction, [], task.labels if task.is_classification else None)
        rng = random.Random(ctx.seed)
        lengths = c.pool()
        init_ids = [init_token_ids(lm, task, c.init, k, rng, instruction) for k in lengths]
        torch.manual_seed(ctx.seed)
        module = DynamicModule(lm, init_ids, c.position, instruction, True, [f"{k} vectors" for k in lengths],
                               weight_scale=c.weights_lr, tau=c.tau)
        return train(module, lm, task, layout, c, ctx, loss=mixture_loss(module, lm, task, layout, c.loss)).prompt

    def summarize(self, lm, task, run, ctx) -> dict:
        """Each pool prompt's score alone and how often the gate picks it, on the splits scored."""
        return {"members": member_scores(lm, task, run, ctx)}
