"""Compatibility: the soft artifact types now live in `promptlift.artifacts.soft`."""

from .artifacts.soft import POSITIONS, PrefixPrompt, SoftPrompt

__all__ = ["SoftPrompt", "PrefixPrompt", "POSITIONS"]
