"""Composition: `--method ape+prompt-tuning+calibrated` runs registered methods in order, each stage
continuing from the artifact of the stage before (an instruction found by a search -> soft vectors
initialised from its tokens -> calibration wrapping the result).

The hand-over is one rule for every method: a stage gets the previous artifact as `ctx.start` and is
built by `Method.from_start(start)` (by default an empty `instruction` option takes the start's
instruction); a method lists the artifact types it can continue from in `takes` ("*": any). A chain
whose stage cannot take what the stage before makes is refused before any model loads.

Every stage after the first is kept only if it ranks above its start on dev by the one best-on-dev rule
(`engine.search.best_of`: the dev score, then the gold answers' log-probability, then the start). With a run directory each stage
writes its artifact and record to `stages/<i>-<name>/` (its checkpoints too), so `--resume` skips the
stages that finished. The budget is the run's, shared by all stages.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ...artifacts import Prompt
from ...artifacts import load as load_prompt
from ...engine.search import best_of
from ...errors import BudgetExceeded, ConfigError
from ...files import write_json
from ...lm.budget import ledger_of
from ...registry import get_method, register_composer
from ..base import Method

STAGE_RECORD = "stage.json"


@dataclass
class Stage:
    """What a stage did: its dev score and its start's, which of the two was kept, what it cost."""

    name: str
    dev: float | None
    start_dev: float | None = None
    kept: str = "stage"  # "stage" | "start" (not better on dev than its start) | "skipped" (budget spent)
    calls: int = 0
    forward: int = 0
    seconds: float = 0.0
    resumed: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def stage_dir(run_dir: Path | None, i: int, name: str) -> Path | None:
    return Path(run_dir) / "stages" / f"{i + 1}-{name}" if run_dir is not None else None


def run_stages(methods: list[Method], lm, task, ctx, start: Prompt | None = None) -> tuple[Prompt, list[Stage]]:
    """Run `methods` in order from `start` (None: the first starts from the task alone); return the last kept
    artifact and one `Stage` per method. A stage stopped by the budget keeps its start and ends the chain."""
    stages: list[Stage] = []
    for i, m in enumerate(methods):
        sub = stage_dir(ctx.run_dir, i, m.name)
        done = _finished(sub) if ctx.resume else None
        if done is not None:
            start = done[0]
            stages.append(dataclasses.replace(done[1], resumed=True))
            ctx.note(f"stage {i + 1} ({m.name}) finished before: kept its result")
            continue
        if ledger_of(lm).exhausted():
            stages.append(Stage(m.name, None, kept="skipped"))
            continue
        start, stage = _run_stage(m, lm, task, ctx, start, sub)
        stages.append(stage)
        if sub is not None:
            start.save(sub)
            write_json(sub / STAGE_RECORD, stage.to_dict())
    assert start is not None, "a pipeline has at least one stage"
    return start, stages


def _run_stage(m: Method, lm, task, ctx, start: Prompt | None, sub: Path | None) -> tuple[Prompt, Stage]:
    if start is not None:
        if "*" not in m.takes and start.type not in m.takes:
            raise ConfigError(f"stage {m.name!r} cannot continue from a {start.type} prompt "
                              f"(it takes: {', '.join(m.takes) or 'none'})")
        m = m.from_start(start)
    before, t0 = ledger_of(lm).counters(), time.perf_counter()
    sctx = dataclasses.replace(ctx, run_dir=sub, start=start, reporter=ctx.reporter,
                               log=(lambda row: ctx.log({**row, "stage": m.name})) if ctx.log else None)
    try:
        made = m.fit(lm, task, sctx)
    except BudgetExceeded:
        if start is None:
            raise
        made = start
    candidates = [start, made] if start is not None and made.hash != start.hash else [made]
    choice = best_of(candidates, lm, task, ctx, name=m.name)
    after = ledger_of(lm).counters()
    stage = Stage(m.name, choice.scores[-1], choice.scores[0] if len(candidates) > 1 else None,
                  kept="start" if len(candidates) > 1 and choice.index == 0 else "stage",
                  calls=after["calls"] - before["calls"], forward=after["forward"] - before["forward"],
                  seconds=round(time.perf_counter() - t0, 3))
    if stage.kept == "start":
        ctx.note(f"stage {m.name}: dev {stage.dev} is not above its start's {stage.start_dev}: kept the start")
    return candidates[choice.index], stage


def _finished(sub: Path | None) -> tuple[Prompt, Stage] | None:
    """A stage's saved artifact and record, if it finished in an earlier run of this directory."""
    if sub is None or not (sub / STAGE_RECORD).is_file() or not (sub / "prompt.json").is_file():
        return None
    rec = json.loads((sub / STAGE_RECORD).read_text())
    return load_prompt(sub), Stage(**{k: v for k, v in rec.items() if k in {f.name for f in dataclasses.fields(Stage)}})


class Pipeline(Method):
    """Registered methods run in order; built by `pipeline_class` for a name "a+b+c"."""

    family = "pipeline"
    stages: ClassVar[tuple[type, ...]] = ()

    @classmethod
    def make_config(cls, **options):
        config = super().make_config(**options)
        for stage in cls.stages:  # each stage checks the options it gets now, before anything loads
            stage.make_config(**_options_for(stage, config))
        return config

    def stage_methods(self) -> list[Method]:
        """The stages as methods: each gets the options given that it has (the rest at its defaults)."""
        return [stage(**_options_for(stage, self.config)) for stage in self.stages]

    def check(self, lm, task) -> None:
        for m in self.stage_methods():
            m.check(lm, task)

    def fit(self, lm, task, ctx):
        prompt, stages = run_stages(self.stage_methods(), lm, task, ctx, ctx.start)
        meta = {**prompt.meta, "pipeline": {"name": self.name, "stages": [s.to_dict() for s in stages]}}
        if any(s.kept == "skipped" for s in stages) or ledger_of(lm).exhausted():
            meta["stopped"] = "budget"
        return dataclasses.replace(prompt, meta=meta)

    def summarize(self, lm, task, run, ctx) -> dict:
        return {"pipeline": run.prompt.meta.get("pipeline")}


def _options_for(stage: type, config) -> dict:
    own = {f.name for f in dataclasses.fields(stage.Config)}
    return {k: v for k, v in dataclasses.asdict(config).items() if v is not None and k in own}


@register_composer
def pipeline_class(name: str) -> type[Pipeline]:
    """The method class running the stages named in `name` ("ape+prompt-tuning+calibrated").

    Unknown stage names get the registry's error (with its did-you-mean); a stage that cannot continue
    from what the stage before makes (`Method.takes` / `makes`) is refused here, before any model loads.
    """
    parts = name.split("+")
    if not all(parts):
        raise ConfigError(f"method {name!r}: empty stage name; expected names joined by '+', e.g. ape+prompt-tuning")
    stages = tuple(get_method(p) for p in parts)
    for a, b in zip(stages, stages[1:]):
        if not b.takes:
            raise ConfigError(f"method {name!r}: {b.name} cannot be a later stage (it starts from the task alone)")
        if "*" not in b.takes and a.makes and a.makes not in b.takes:
            raise ConfigError(f"method {name!r}: {b.name} continues from a {' or '.join(b.takes)} prompt, and "
                              f"{a.name} makes a {a.makes} prompt")
    fields: dict[str, tuple] = {}
    for stage in stages:
        for f in dataclasses.fields(stage.Config):
            if f.name not in fields:
                users = [s.name for s in stages if f.name in {g.name for g in dataclasses.fields(s.Config)}]
                help_ = f"{f.metadata.get('help', '')} (to: {', '.join(dict.fromkeys(users))})"
                fields[f.name] = (f.name, f.type, field(default=None, metadata={"help": help_}))
    config = dataclasses.make_dataclass("PipelineConfig", list(fields.values()))
    white_box = any(s.white_box for s in stages)
    kinds = tuple(k for k in stages[0].task_kinds if all(k in s.task_kinds for s in stages))
    return type("Pipeline", (Pipeline,), {"name": name, "aliases": (), "stages": stages, "Config": config,
                                          "white_box": white_box, "task_kinds": kinds,
                                          "takes": stages[0].takes, "makes": stages[-1].makes})
