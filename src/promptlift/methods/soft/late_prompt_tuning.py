"""Late prompt tuning: Liu et al. 2022, "Late Prompt Tuning: A Late Prompt Could Be Better Than Many Prompts".

k trainable vectors that enter the model at an intermediate decoder layer L
(`layer`, default the middle: num_layers // 2) instead of at the input. The
layers below L never see them, so backpropagation stops at L and a step costs
less than prompt tuning's, whose gradient runs through every layer.

Placement on a decoder-only model (the paper's models are encoders, where the
prompt is inserted into the hidden sequence at L): the prompt's constant part
is [header][k placeholder positions][instruction]; below L the k positions hold
placeholder tokens, at L's input their hidden states are replaced by the
learned vectors (`engine.soft.late_prefix_kv`). The placeholders are the `init`
tokens (by default the instruction's, as prompt tuning's `init=text`), and the
vectors start as the hidden states those tokens reach at L, so training starts
from the text prompt of the placeholders. layer=0 is prompt tuning.

Not implemented: the paper's instance-aware prompt generator (a small network
making the prompt from each input's hidden states below L). Its vectors depend
on the input, so they cannot live in the constant, once-cached prefix that the
trainer, the evaluation engine and the proxy share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ...artifacts import LatePrompt
from ...engine.soft import late_prefix_kv, late_start
from ...engine.train import SoftModule
from ...errors import ConfigError
from ...registry import register
from ..shared import SoftConfig
from .common import SoftMethod


@dataclass
class LateConfig(SoftConfig):
    layer: int = field(default=-1, metadata={"help": "decoder layer the prompt enters at (-1: the middle, layers // 2)"})

    def __post_init__(self):
        super().__post_init__()
        if self.layer < -1:
            raise ValueError(f"layer must be >= 0 (or -1 for the middle), got {self.layer}")


class LatePromptModule(SoftModule):
    def __init__(self, lm, layout, init_ids: list[int], layer: int, position: str, instruction: str):
        super().__init__()
        self.embeds = nn.Parameter(late_start(lm, layout, init_ids, layer, position))  # (k, hidden)
        self._shell = LatePrompt(instruction=instruction, position=position, hidden_size=lm.hidden_size,
                                 num_layers=lm.num_layers, layer=layer, ids=list(init_ids),
                                 embeds=self.embeds.detach())

    def prefix(self, lm, layout, header):
        s = self._shell
        return late_prefix_kv(lm, layout, self.embeds, s.layer, s.ids, s.position, header)

    def to_prompt(self) -> LatePrompt:
        s = self._shell
        return LatePrompt(instruction=s.instruction, position=s.position, hidden_size=s.hidden_size,
                          num_layers=s.num_layers, layer=s.layer, ids=list(s.ids), embeds=self.embeds.detach().clone())


@register("late-prompt-tuning")
class LatePromptTuning(SoftMethod):
    """k trainable vectors entering at an intermediate layer (Liu et al. 2022)."""

    Config = LateConfig

    def build(self, lm, task, layout, init_ids):
        layer = self.config.layer if self.config.layer >= 0 else lm.num_layers // 2
        if layer >= lm.num_layers:
            raise ConfigError(f"layer {layer} does not exist: {lm.model_id} has {lm.num_layers} layers "
                              f"(0..{lm.num_layers - 1})")
        return LatePromptModule(lm, layout, init_ids, layer, self.config.position, self.instruction(task))
