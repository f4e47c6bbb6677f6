"""Prompt artifacts: what an optimization produces, saves, ships and serves.

Artifacts are data (see `base`): `TextPrompt`, `KnnPrompt` (text, portable),
`TokenPrompt` (token ids on the model they were found on, text elsewhere),
`SoftPrompt`, `PrefixPrompt`, `LatePrompt` (tensors, tied to one model), the wrappers
`Calibrated` and `Reasoning`, `MixturePrompt` (K prompts mixed with learned
weights) and `SelectorPrompt` (a pool and a classifier picking one member per input).
Inference behaviour lives in `promptlift.engine.apply`.
"""

from .base import FORMAT, Prompt, artifact_types, content_hash, load, register_type, save
from .mixture import MixturePrompt
from .selector import SelectorPrompt
from .soft import POSITIONS, LatePrompt, PrefixPrompt, SoftPrompt
from .text import KnnPrompt, TextPrompt
from .token import TokenPrompt
from .wrappers import CONTENT_FREE, Calibrated, Reasoning

__all__ = ["FORMAT", "Prompt", "TextPrompt", "KnnPrompt", "TokenPrompt", "SoftPrompt", "PrefixPrompt", "LatePrompt",
           "Calibrated", "Reasoning", "MixturePrompt", "SelectorPrompt", "POSITIONS", "CONTENT_FREE", "load", "save",
           "content_hash", "register_type", "artifact_types"]
