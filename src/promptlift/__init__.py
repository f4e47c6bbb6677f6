"""promptlift: optimize an LLM's prompt, prove the gain on held-out data, serve the result.

    import promptlift
    task = promptlift.Task.from_dir("path/to/data")      # train/dev/test.jsonl
    lm = promptlift.HFModel("smollm2-135m")              # or OpenAIModel(...)
    run = promptlift.optimize("few-shot", lm, task, shots=4, out="runs/fs")
    print(run.test.accuracy, run.test.ci95)
    run.prompt.save("prompt.json")
"""

from __future__ import annotations

from .artifacts import Prompt, TextPrompt, load
from .engine.evaluate import EvalResult, evaluate
from .errors import PromptliftError
from .lm.base import LM, GenerationConfig
from .lm.budget import Budget
from .registry import get_method, list_methods, register
from .task import Example, Task

__version__ = "0.1.0"


def optimize(*args, **kwargs):
    """See `promptlift.api.optimize`."""
    from .api import optimize as _optimize

    return _optimize(*args, **kwargs)


def __getattr__(name):  # heavy backends load on first use
    if name == "HFModel":
        from .lm.hf import HFModel

        return HFModel
    if name == "OpenAIModel":
        from .lm.openai import OpenAIModel

        return OpenAIModel
    raise AttributeError(name)


__all__ = ["Task", "Example", "HFModel", "OpenAIModel", "LM", "GenerationConfig", "Budget", "Prompt", "TextPrompt",
           "load", "evaluate", "EvalResult", "optimize", "register", "get_method", "list_methods", "PromptliftError"]
