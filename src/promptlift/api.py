"""The Python surface: optimize(), evaluate(), load().

    task = promptlift.Task.from_dir("data/sst2")
    lm = promptlift.HFModel("smollm2-135m")
    run = promptlift.optimize("few-shot", lm, task, shots=4, out="runs/fs")
    run.prompt.save("prompt.json")
    promptlift.evaluate(lm, task, run.prompt)
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import Prompt
from .artifacts import load as load_prompt
from .engine.evaluate import EvalResult, evaluate
from .errors import ConfigError
from .lm.budget import Budget
from .methods.base import RunContext
from .registry import get_method
from .runs import RunDir
from .task import Task

__all__ = ["optimize", "evaluate", "load_prompt", "Run"]


@dataclass
class Run:
    """The outcome of `optimize`: the prompt, its dev/test scores, what it cost."""

    method: str
    prompt: Prompt
    dev: EvalResult | None
    test: EvalResult | None
    cost: dict
    seconds: float
    config: dict = field(default_factory=dict)
    dir: Path | None = None

    def summary(self) -> dict:
        """The content of result.json."""
        return {
            "method": self.method,
            "model": self.config.get("model"),
            "task": self.config.get("task"),
            "seed": self.config.get("seed"),
            "dev": self.dev.to_dict() if self.dev else None,
            "test": self.test.to_dict() if self.test else None,
            "cost": self.cost,
            "seconds": round(self.seconds, 3),
            "config": self.config,
        }


def optimize(method: str, lm, task: Task, *, out: str | Path | None = None, seed: int = 0,
             budget: str | Budget | None = None, resume: bool = False, overwrite: bool = False,
             progress: bool = True,
             eval_splits: tuple[str, ...] = ("dev", "test"), eval_batch_size: int = 16, **options: Any) -> Run:
    """Run method `method` on `task` with `lm`; evaluate the result on dev and test.

    Selection inside the method uses train and dev only; test is scored once, at
    the end. `budget` ("calls=200,forward=500" or a Budget) limits what the
    method spends; evaluation afterwards is counted apart. With `out`, the run
    directory gets config, history, artifact, predictions and result.json;
    `resume=True` continues a run that was cut off; an `out` that already holds
    a run is refused unless `resume` or `overwrite` is given (no work is lost silently).
    """
    cls = get_method(method)
    m = cls(**options)
    m.check(lm, task)
    run_budget = budget if isinstance(budget, Budget) else Budget.parse(budget)
    config = {"method": method, "options": dataclasses.asdict(m.config), "model": lm.model_id,
              "task": task.name, "data": task.source, "seed": seed, "budget": dict(run_budget.limits)}
    rd = RunDir(out) if out is not None else None
    if rd is not None:
        old = rd.read_config()
        if old is not None and not resume:
            if not overwrite:
                raise ConfigError(f"{rd.path} already holds a run; pass --resume to continue it, "
                                  "--overwrite to replace it, or choose another --out")
            rd.clear()
        if resume and old is not None and _comparable(old) != _comparable(config):
            raise ConfigError(f"{rd.path}: --resume with different settings than the run there "
                              f"(was {_comparable(old)}, now {_comparable(config)})")
        rd.write_config(config)
    ctx = RunContext(seed=seed, run_dir=rd.path if rd else None, resume=resume, progress=progress,
                     log=rd.log if rd else None)
    ctx.seed_everything()

    outer = lm.budget
    lm.budget = run_budget
    t0 = time.perf_counter()
    try:
        prompt = m.fit(lm, task, ctx)
    finally:
        lm.budget = outer
        for k, v in run_budget.used().items():
            if k != "tokens":
                setattr(outer, k, getattr(outer, k) + v)
    fit_seconds = time.perf_counter() - t0
    prompt.model = lm.model_id
    prompt.method = method
    if rd is not None:
        prompt.save(rd.path)

    results: dict[str, EvalResult | None] = {"dev": None, "test": None}
    for split in eval_splits:
        if getattr(task, split):
            results[split] = evaluate(lm, task, prompt, split=split, batch_size=eval_batch_size, progress=progress)
            if rd is not None:
                rd.write_predictions(split, results[split].predictions)
    run = Run(method, prompt, results["dev"], results["test"], {**run_budget.used(), "fit_seconds": round(fit_seconds, 3)},
              time.perf_counter() - t0, config, rd.path if rd else None)
    if rd is not None:
        rd.write_result(run.summary())
    return run


def _comparable(cfg: dict) -> dict:
    return {k: cfg.get(k) for k in ("method", "options", "model", "task", "seed")}
