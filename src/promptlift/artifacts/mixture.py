"""`MixturePrompt`: K prompts whose answer distributions are mixed with learned weights.

Qin & Eisner 2021, "Learning How to Ask: Querying LMs with Mixtures of Soft Prompts". The members are
artifacts of their own (soft prompts, as `soft-mixture` makes them; any one-stage prompt applies); the
mixture adds only its weights:

    w(x) = softmax(weights + gate @ f(x))          (K,)
    p(label | x) = sum_k w_k(x) p_k(label | x)     p_k: softmax over the labels of member k's label scores

With `choose="argmax"` (dynamic prompting) each input is answered by its highest-weight member alone
(w(x) one-hot). f(x) is the L2-normalised mean of the input's token embeddings on the model (`engine.mixture.input_features`);
`gate` empty (0 rows) means weights that do not depend on the input. Everything is data: the weights
and the gate are tensors saved beside the JSON, so a save/load round trip is bit-exact and loading runs no code.
Inference lives in `engine.mixture`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .base import Prompt, register_type
from .soft import _empty

CHOOSE = ("mix", "argmax")


@register_type
@dataclass
class MixturePrompt(Prompt):
    """members: K prompts; weights: (K,) mixture logits; gate: (K, hidden) data-dependent logits, or (0, 0);
    choose: "mix" (the weighted mixture) or "argmax" (each input's highest-weight member alone)."""

    type: ClassVar[str] = "mixture"
    members: list[Prompt] = field(default_factory=list, metadata={"kind": "prompts"})
    weights: Any = field(default_factory=_empty(0), metadata={"kind": "tensor"})
    gate: Any = field(default_factory=_empty(0, 0), metadata={"kind": "tensor"})
    choose: str = field(default="mix", metadata={"omit_default": True})

    def __post_init__(self):
        if not self.members:
            raise ValueError("a mixture needs at least one member")
        if not all(isinstance(m, Prompt) for m in self.members):
            raise ValueError("members must be prompt artifacts")
        if self.choose not in CHOOSE:
            raise ValueError(f"choose must be one of {', '.join(CHOOSE)}, got {self.choose!r}")
        k = len(self.members)
        if tuple(self.weights.shape) != (k,):
            raise ValueError(f"weights must have shape ({k},) for {k} members, got {tuple(self.weights.shape)}")
        if self.gate.numel() and (self.gate.dim() != 2 or self.gate.shape[0] != k):
            raise ValueError(f"gate must have shape ({k}, hidden) or be empty, got {tuple(self.gate.shape)}")

    @property
    def gated(self) -> bool:
        """True if the weights depend on the input."""
        return bool(self.gate.numel())
