"""The engine: one evaluation engine, one trainer, one search loop, one way to apply each artifact type.

Importing the package registers every artifact type's applier (`apply` for text,
kNN and the wrappers; `soft` for soft and prefix prompts; `mixture` for mixtures; `selector` for selectors).
"""

from . import apply, mixture, selector, soft  # noqa: F401  (registers the appliers)
