"""What a method is: a config dataclass and `fit(lm, task, ctx) -> Prompt`.

A method never writes a training or search loop of its own: gradient methods
hand their parameters to `engine.train`, search methods use `engine.search`,
and everyone evaluates with `engine.evaluate`. `fit` must not mutate the LM
or the task, and keeps no state on `self` between runs.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..artifacts import Prompt
from ..errors import ConfigError
from ..reporter import make_reporter
from ..task import Task


@dataclass
class RunContext:
    """What a method may use besides the model and the task.

    seed: every random choice derives from it (0 is a seed like any other).
    run_dir: where the method may write checkpoints (None = in memory only).
    resume: continue from the checkpoint in run_dir if there is one.
    progress: show progress bars (with the default console reporter).
    log: callback(dict) appending one line to the run's history.
    optimizer_lm: the model that proposes prompts for LLM-as-optimizer methods (None: the target itself).
    reporter: where progress, notes and step records go (`promptlift.reporter`): "console"
      (default), None / "quiet", or an object. Methods call `ctx.note`, `ctx.bar`, `ctx.record`.
    budget: the run's budget ledger (`lm.budget.Budget`); while `fit` runs every model charges it
      (`lm.budget.ledger_of`), so methods rarely need it directly. None: the target's own `lm.budget`.
    start: in a pipeline (`--method a+b`, `methods/auto/pipeline.py`), the artifact of the stage before,
      which this stage continues from (None: the method starts from the task alone).
    """

    seed: int = 0
    run_dir: Path | None = None
    resume: bool = False
    progress: bool = True
    log: Any = None
    optimizer_lm: Any = None
    reporter: Any = "console"
    budget: Any = None
    start: Prompt | None = None

    def __post_init__(self):
        self.reporter = make_reporter(self.reporter, self.progress)

    def rng(self) -> random.Random:
        return random.Random(self.seed)

    def seed_everything(self) -> None:
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)

    def record(self, **row) -> None:
        """One history row: to the run's history (if any) and to the reporter."""
        if self.log is not None:
            self.log(row)
        self.reporter.record(row)

    def note(self, message: str) -> None:
        """A one-line note for the person running (e.g. why a run stopped early)."""
        self.reporter.note(message)

    def bar(self, total: int, desc: str, *, initial: int = 0, unit: str = "step"):
        """A progress bar (`update`, `set_postfix`, `close`)."""
        return self.reporter.progress(total, desc, initial=initial, unit=unit)


class Method:
    """Base class of every registered method.

    Subclasses define `Config` (a dataclass whose fields are the method's
    options, with `metadata={"help": ...}`) and `fit`.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    white_box: ClassVar[bool] = False  # needs a local HFModel
    task_kinds: ClassVar[tuple[str, ...]] = ("classification", "generation")
    # small options that exercise everything the method does, in seconds on a tiny model:
    # the contract tests (tests/test_methods_contract.py) run every method with them
    smoke: ClassVar[dict] = {}
    # as a later stage of a pipeline: the artifact types it continues from ("*": any; none: it only starts one)
    takes: ClassVar[tuple[str, ...]] = ()
    makes: ClassVar[str] = ""  # the artifact type it makes ("": it varies; checked when the stage runs)

    @dataclass
    class Config:
        pass

    def __init__(self, config: Any = None, **options: Any):
        if config is None:
            config = self.make_config(**options)
        elif options:
            raise ConfigError("pass either a config or options, not both")
        self.config = config

    @classmethod
    def make_config(cls, **options: Any):
        """Build the Config from keyword options; unknown or mistyped options are errors, never swallowed."""
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise ConfigError(f"method {cls.name!r}: unknown option(s) {', '.join(unknown)}; "
                              f"expected: {', '.join(fields) or 'none'}")
        clean = {}
        for k, v in options.items():
            clean[k] = _coerce(cls.name, fields[k], v)
        try:
            return cls.Config(**clean)
        except (TypeError, ValueError, ConfigError) as e:
            raise ConfigError(f"method {cls.name!r}: {e}") from None

    @classmethod
    def options(cls) -> list[dict]:
        """[{name, type, default, help}] for `promptlift methods` and the CLI."""
        out = []
        for f in dataclasses.fields(cls.Config):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
            out.append({"name": f.name, "type": str(f.type), "default": default, "help": f.metadata.get("help", "")})
        return out

    def config_record(self) -> dict:
        """The options as recorded in config.json (and compared on --resume)."""
        return dataclasses.asdict(self.config)

    def summarize(self, lm, task: Task, run, ctx: RunContext) -> dict:
        """Fields this method adds to result.json, after the run's prompt was evaluated (`run`: `api.Run`)."""
        return {}

    def from_start(self, start: Prompt) -> "Method":
        """This method continuing from `start`, the previous pipeline stage's artifact (a type in `takes`).

        By default an `instruction` option left empty takes the start's instruction (a soft prompt is then
        initialised from its tokens, a search starts from it); `ctx.start` carries the whole artifact.
        """
        text = getattr(start, "instruction", "")
        if not text or getattr(self.config, "instruction", None) != "":
            return self
        return type(self)(dataclasses.replace(self.config, instruction=text))

    def check(self, lm, task: Task) -> None:
        if self.white_box and not getattr(lm, "is_white_box", False):
            raise ConfigError(f"method {self.name!r} needs a local white-box model (HFModel), not {lm.model_id!r}")
        if task.kind not in self.task_kinds:
            raise ConfigError(f"method {self.name!r} does not apply to {task.kind} tasks")

    def fit(self, lm, task: Task, ctx: RunContext) -> Prompt:
        """Optimize a prompt for `task` on `lm` (train/dev only) and return it."""
        raise NotImplementedError(f"{type(self).__name__} must define fit()")


def _coerce(method: str, f: dataclasses.Field, v: Any) -> Any:
    """Convert CLI strings to the field's type ("3" -> 3, "true" -> True)."""
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if not isinstance(v, str):
        return v
    try:
        if t == "int":
            return int(v)
        if t == "float":
            return float(v)
        if t == "bool":
            if v.lower() in ("1", "true", "yes", "on"):
                return True
            if v.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
    except ValueError:
        raise ConfigError(f"method {method!r}: option {f.name} expects {t}, got {v!r}") from None
    return v
