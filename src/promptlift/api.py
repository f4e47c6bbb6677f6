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
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import Prompt
from .artifacts import load as load_prompt
from .engine.evaluate import EvalResult, evaluate
from .lm.base import model_key
from .lm.budget import Budget
from .methods.base import RunContext
from .registry import get_method
from .runs import RunDir, config_differences  # noqa: F401  (config_differences: the CLI reads it here)
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
    stopped: str = ""  # "budget" when the method stopped at its budget and kept its best prompt so far
    details: dict = field(default_factory=dict)  # what the method adds to result.json (`Method.summarize`)
    gain: dict | None = None  # test gain over the zero-shot instruction on the same rows (metrics.paired_gain)
    budget: dict = field(default_factory=dict)  # the run's ledger: {"limits": {..}, "spent": {..}} (Budget.as_dict)

    def summary(self) -> dict:
        """The content of result.json (`search`: the search loop's summary, when a search made the prompt)."""
        search = self.prompt.meta.get("search")
        return {
            "method": self.method,
            "model": self.config.get("model"),
            "task": self.config.get("task"),
            "seed": self.config.get("seed"),
            "dev": self.dev.to_dict() if self.dev else None,
            "test": self.test.to_dict() if self.test else None,
            "cost": self.cost,
            "budget": self.budget,
            "stopped": self.stopped,
            "gain": self.gain,
            "seconds": round(self.seconds, 3),
            **({"search": search} if isinstance(search, dict) else {}),
            "config": self.config,
            **self.details,
        }


def optimize(method: str, lm, task: Task, *, out: str | Path | None = None, seed: int = 0,
             budget: str | Budget | None = None, resume: bool = False, overwrite: bool = False,
             progress: bool = True, reporter: Any = "console", optimizer_lm=None, command: dict | None = None,
             eval_splits: tuple[str, ...] = ("dev", "test"), eval_batch_size: int = 16, **options: Any) -> Run:
    """Run method `method` on `task` with `lm`; evaluate the result on dev and test.

    Selection inside the method uses train and dev only; test is scored once, at
    the end. `budget` ("calls=200,forward=500,time=20m" or a Budget) is the run's one ledger
    (`ctx.budget`): it limits what the method spends and records it (`Run.budget`); evaluation
    afterwards is counted apart, on `lm`'s own budget. With `out`, the run
    directory gets config, history, artifact, predictions and result.json;
    `resume=True` continues a run that was cut off; an `out` that already holds
    a run is refused unless `resume` or `overwrite` is given (no work is lost silently).
    `optimizer_lm` proposes prompts for LLM-as-optimizer methods (default: `lm` itself).
    `reporter` receives progress bars, notes and step records: "console" (bars when `progress`,
    notes on stderr), None or "quiet" (nothing), or an object (e.g. `promptlift.reporter.Capture()`).
    `command`: how the run was asked for (the CLI's options), kept in config.json so `--resume` needs no
    options retyped.
    """
    cls = get_method(method)
    m = cls(**options)
    m.check(lm, task)
    ledger = budget if isinstance(budget, Budget) else Budget.parse(budget)
    config = {"method": method, "options": m.config_record(), "model": lm.model_id,
              "optimizer_model": optimizer_lm.model_id if optimizer_lm is not None else None,
              "task": task.name, "data": task.source, "seed": seed, "budget": dict(ledger.limits)}
    if command is not None:
        config["command"] = command
    rd = RunDir(out) if out is not None else None
    if rd is not None:
        ledger.add(rd.start(config, resume=resume, overwrite=overwrite))  # a killed run's spend still counts

        def log(row: dict) -> None:  # history and the spend so far: both survive a kill
            rd.log(row)
            rd.write_spend(ledger.counters())

    ctx = RunContext(seed=seed, run_dir=rd.path if rd else None, resume=resume, progress=progress,
                     log=log if rd else None, optimizer_lm=optimizer_lm, reporter=reporter, budget=ledger)
    ctx.seed_everything()

    # the run's one ledger: while fit runs, every model (target and optimizer) charges it; the caller's
    # models and their own budgets are left as they were
    t0 = time.perf_counter()
    with ledger.running():
        prompt = m.fit(lm, task, ctx)
    fit_seconds = time.perf_counter() - t0
    searched = prompt.meta.get("search") if isinstance(prompt.meta.get("search"), dict) else {}
    stopped = "budget" if (ledger.exhausted() or "budget" in (prompt.meta.get("stopped"), searched.get("stopped"))) \
        else ""
    # fit's prompt stays as it was; the saved one records where it was made and its task's label words, so serve
    # and generate render and answer as eval does
    prompt = dataclasses.replace(prompt, model=model_key(lm), method=method).made_for(task)
    if rd is not None:
        prompt.save(rd.path)
        rd.write_spend(ledger.counters())

    results: dict[str, EvalResult | None] = {"dev": None, "test": None}
    for split in eval_splits:
        if not getattr(task, split):
            continue
        # in a run directory predictions are written as they are computed; a killed evaluation of the same prompt
        # resumes
        with rd.predictions(split, prompt.hash) if rd is not None else nullcontext(([], None)) as (done, write):
            results[split] = evaluate(lm, task, prompt, split=split, batch_size=eval_batch_size, progress=progress,
                                      on_records=write, done=done, reporter=ctx.reporter)
    search_cost = prompt.meta.get("cost") if isinstance(prompt.meta.get("cost"), dict) else {}
    cost = {**ledger.used(), **search_cost, "fit_seconds": round(fit_seconds, 3)}
    gain = _gain_over_zero_shot(lm, task, prompt, results["test"], eval_batch_size)
    run = Run(method, prompt, results["dev"], results["test"], cost,
              time.perf_counter() - t0, config, rd.path if rd else None, stopped,
              gain=gain, budget=ledger.as_dict())
    run.details = m.summarize(lm, task, run, ctx)
    nearest = _nearest_tokens(lm, prompt)
    if nearest:  # the report loads no model: what a soft prompt's vectors are near is computed here
        run.details = {**run.details, "prompt_view": {"nearest_tokens": nearest}}
    run.seconds = time.perf_counter() - t0
    if rd is not None:
        rd.write_result(run.summary())
        rd.close()  # release the run's lock
    return run


def _nearest_tokens(lm, prompt: Prompt, k: int = 3) -> list[list[dict]] | None:
    """Per trained vector of a soft prompt, the `k` vocabulary tokens whose input embeddings are nearest by
    cosine: [[{"token", "cosine"}, ..k], ..one per vector]; None for other prompts or without local weights."""
    import torch
    import torch.nn.functional as F

    embeds = getattr(prompt, "embeds", None)
    if prompt.type != "soft" or embeds is None or not getattr(lm, "is_white_box", False) or not len(embeds):
        return None
    with torch.no_grad():
        table = lm.embedding_matrix().float()
        sims = F.normalize(embeds.float().to(table.device), dim=-1) @ F.normalize(table, dim=-1).T
        vals, ids = sims.topk(min(k, table.shape[0]), dim=-1)
    return [[{"token": lm.tokenizer.decode([int(i)]), "cosine": round(float(v), 4)} for v, i in zip(vs, row)]
            for vs, row in zip(vals, ids)]


def _gain_over_zero_shot(lm, task: Task, prompt: Prompt, test: EvalResult | None, batch_size: int) -> dict | None:
    """The test gain over the task's instruction alone (zero-shot) on the same rows, with its paired test.

    The baseline is scored here (not counted in the method's budget); none for a zero-shot prompt itself.
    """
    from .artifacts import TextPrompt
    from .metrics import paired_gain

    if test is None or not test.predictions:
        return None
    base_prompt = TextPrompt(instruction=task.instruction)
    if base_prompt.hash == TextPrompt(instruction=getattr(prompt, "instruction", None) or "",
                                      demos=list(getattr(prompt, "demos", []) or [])).hash and prompt.type == "text":
        return None
    base = evaluate(lm, task, base_prompt, split="test", batch_size=batch_size, progress=False)
    rows = [(b["score"], a["score"]) for b, a in zip(base.predictions, test.predictions) if b["input"] == a["input"]]
    return {"baseline": "zero-shot", "baseline_score": base.accuracy, "baseline_prompt_tokens": base.prompt_tokens,
            **paired_gain([b for b, _ in rows], [a for _, a in rows])}
