"""P-tuning v2: Liu et al. 2022, "P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning Universally
Across Scales and Tasks".

Deep prompts: trainable keys and values at every layer, optimised directly (no
reparameterisation). Initialised from the keys/values of real tokens, like
prefix tuning's real-word initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...registry import register
from .common import SoftConfig, SoftMethod
from .prefix_tuning import PrefixModule


@dataclass
class PTuningV2Config(SoftConfig):
    lr: float = field(default=5e-3, metadata={"help": "AdamW learning rate"})


@register("p-tuning-v2")
class PTuningV2(SoftMethod):
    """Deep prompts: direct per-layer key/value parameters (Liu et al. 2022)."""

    Config = PTuningV2Config

    def build(self, lm, task, layout, init_ids):
        return PrefixModule(lm, init_ids, self.config.position, self.instruction(task), None)
