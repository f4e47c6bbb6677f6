"""The engine: one evaluation engine, one trainer, one search loop, one way to apply each artifact type.

Importing the package registers every artifact type's applier (`apply` for text,
kNN and the wrappers; `soft` for soft and prefix prompts; `mixture` for mixtures).
"""

from . import apply, mixture, soft  # noqa: F401  (registers the appliers)
