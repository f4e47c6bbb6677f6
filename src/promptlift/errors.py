"""User-facing errors.

Every error a user can cause (bad file, unknown name, budget spent, a prompt too
long for the model) is a `PromptliftError`. The CLI prints its message as one
line on stderr (one JSON line with --json) and exits with the error's
`exit_code`: 2 for bad input, 3 when the budget is spent before any prompt
could be scored (a run that stops at its budget with a best prompt is a normal
end, exit 0, handled by the CLI), 4 when a remote
endpoint keeps failing; the Python API lets it propagate.
"""

from __future__ import annotations


class PromptliftError(Exception):
    """Base class of every error caused by input, configuration or limits."""

    exit_code = 2


class DataError(PromptliftError):
    """A data file or row is missing, malformed or inconsistent."""


class ConfigError(PromptliftError):
    """An unknown name (model, method, split) or an invalid option."""


class ModelError(PromptliftError):
    """A model cannot be loaded, or a request does not fit it (e.g. too long)."""


class ArtifactError(PromptliftError):
    """A prompt artifact is corrupt, changed on disk, or made for another model."""


class BudgetExceeded(PromptliftError):
    """The run's budget (calls, tokens or passes) is spent."""

    exit_code = 3


class UnsupportedError(PromptliftError):
    """The backend cannot do what was asked (e.g. scoring on a chat-only API)."""


class UpstreamError(ModelError):
    """A remote model endpoint still fails after the retries (network, 5xx, rate limit)."""

    exit_code = 4
