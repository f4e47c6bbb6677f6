"""The LM interface every backend implements.

Two verbs cover every method:
- `generate(prompts, ...)`: sample text continuations of chat prompts;
- `score(prompt, continuations)`: total log-probability of given continuations.

A prompt is a list of chat messages (`{"role": ..., "content": ...}`) or a plain
string (a raw completion prompt). Backends render messages through the model's
chat template when it has one.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Sequence, Union

from .budget import Budget

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}
PromptLike = Union[str, Sequence[Message]]


@dataclass
class GenerationConfig:
    """Sampling options shared by every backend. temperature 0 = greedy."""

    n: int = 1
    temperature: float = 0.0
    max_tokens: int = 64
    stop: list[str] = field(default_factory=list)
    top_p: float = 1.0
    seed: int | None = None
    choices: list[str] = field(default_factory=list)  # answer with one of these: constrained where the endpoint
    #   can (vLLM guided choice); a classifier that generates asks for its label words


class LM(abc.ABC):
    """A language model behind one small interface.

    Attributes:
      model_id: stable identifier (used in caches and artifacts).
      budget: the model's own counters, charged outside a run. A backend charges `lm.budget.ledger_of(self)`:
        the running run's ledger while `optimize` runs (the caller's model is never altered), else this.
    """

    model_id: str
    budget: Budget

    @abc.abstractmethod
    def generate(self, prompts: Sequence[PromptLike], config: GenerationConfig | None = None) -> list[list[str]]:
        """For each prompt, `config.n` completions (list of n strings)."""

    def score(self, prompt: PromptLike, continuations: Sequence[str]) -> list[float]:
        """Total log-probability of each continuation after `prompt` (the assistant's answer)."""
        from ..errors import UnsupportedError

        raise UnsupportedError(f"{type(self).__name__} cannot score continuations")

    @property
    def can_score(self) -> bool:
        return type(self).score is not LM.score

    @property
    def is_white_box(self) -> bool:
        """True for local models that expose embeddings and key/value caches."""
        return False


def model_key(lm) -> str:
    """What an artifact records as its model: the weights' content identity when known, else the model id."""
    return getattr(lm, "identity", None) or lm.model_id


def same_model(recorded: str | None, lm) -> bool:
    """True if an artifact's recorded model is `lm` (by content identity, or by its id)."""
    return not recorded or recorded in (lm.model_id, model_key(lm))
