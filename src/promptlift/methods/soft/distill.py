"""Distil a prompt into an input-level soft prompt: `promptlift distill RUN --out RUN2`.

Why: vLLM takes input embeddings (`prompt_embeds`) but no per-layer key/value
prefixes, so a `PrefixPrompt` (prefix-tuning, p-tuning v2) cannot be served
there. `distill` trains a `SoftPrompt` (prompt tuning's module) with the one
trainer (`engine.train`, through its `loss_fn` hook) to match the teacher's
output distribution on unlabelled inputs: the task's train and dev inputs, no
label read.

- classification: KL(teacher || student) of the distributions over the labels
  (softmax of each prompt's label scores, the scores rank classification uses);
  the teacher's are computed once;
- generation: KL(teacher || student) of the next-token distributions along the
  teacher's own greedy answer to each input.

The best epoch is the one whose predictions agree most with the teacher's on
the dev inputs (the trainer's dev score, on dev inputs labelled by the
teacher). Only after training are teacher and student scored against the gold
dev labels: `result.json` reports both and the accuracy kept.

Any one-stage prompt the local model applies can be the teacher (a text prompt
with demonstrations distils into soft vectors too); the student takes the
teacher's instruction and placement unless told otherwise.

    run = distill(lm, task, load("runs/prefix"), out="runs/prefix-distilled", tokens=20, epochs=10)
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ...artifacts import POSITIONS, Prompt, SoftPrompt
from ...engine.apply import applier_for
from ...engine.backends import WhiteBox
from ...engine.evaluate import EvalResult, check_model, classify_scores, evaluate, label_candidates
from ...lm.scoring import pad_id_of, pad_rows, score_candidates
from ...engine.train import TrainConfig, train
from ...errors import ConfigError
from ...lm.base import GenerationConfig, model_key
from ...runs import RunDir
from ...task import Example, Task
from ...template import build_layout
from ..base import RunContext, _coerce
from ..shared import INITS, init_token_ids
from .prompt_tuning import PromptTuningModule

METHOD = "distill"


@dataclass
class DistillConfig:
    """Options of `distill` (the student's and the trainer's)."""

    tokens: int = field(default=20, metadata={"help": "virtual tokens of the student soft prompt"})
    init: str = field(default="text", metadata={"help": "text (instruction tokens) | random | labels"})
    position: str = field(default="", metadata={"help": "after_header | prepend ('' = the teacher's)"})
    instruction: str = field(default="", metadata={"help": "text after the soft tokens ('' = the teacher's, "
                                                           "'none' = no text)"})
    epochs: int = field(default=10, metadata={"help": "passes over the unlabelled inputs"})
    batch_size: int = field(default=8, metadata={"help": "inputs per step"})
    lr: float = field(default=3e-2, metadata={"help": "AdamW learning rate"})
    warmup: float = field(default=0.1, metadata={"help": "fraction of steps of linear warm-up"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0: off)"})
    patience: int = field(default=0, metadata={"help": "early stopping after N epochs without gain (0: off)"})
    answer_tokens: int = field(default=32, metadata={"help": "generation: tokens of the teacher's answers to match"})

    def __post_init__(self):
        if self.tokens < 1 or self.epochs < 1 or self.batch_size < 1 or self.answer_tokens < 1:
            raise ValueError("tokens, epochs, batch_size and answer_tokens must be >= 1")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.position and self.position not in POSITIONS:
            raise ValueError(f"position must be one of {', '.join(POSITIONS)}, got {self.position!r}")
        if not self.lr > 0 or not 0 <= self.warmup < 1 or self.grad_clip < 0 or self.patience < 0:
            raise ValueError("lr must be > 0, warmup in [0, 1), grad_clip and patience >= 0")

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, warmup=self.warmup,
                           grad_clip=self.grad_clip, patience=self.patience)


def make_config(**options: Any) -> DistillConfig:
    """DistillConfig from keyword options (CLI strings converted); unknown or bad options are ConfigErrors."""
    fields = {f.name: f for f in dataclasses.fields(DistillConfig)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ConfigError(f"distill: unknown option(s) {', '.join(unknown)}; expected: {', '.join(fields)}")
    try:
        return DistillConfig(**{k: _coerce(METHOD, fields[k], v) for k, v in options.items()})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"distill: {e}") from None


@dataclass
class Distilled:
    """The outcome of `distill`: the student, and teacher and student scored on dev (gold labels)."""

    student: SoftPrompt
    teacher_dev: EvalResult | None
    student_dev: EvalResult | None
    agreement_dev: float | None  # classification: share of dev inputs where student and teacher predict alike
    best_epoch: int
    seconds: float
    config: dict = field(default_factory=dict)
    dir: Path | None = None

    @property
    def kept(self) -> float | None:
        """Student dev accuracy over the teacher's."""
        if not (self.teacher_dev and self.student_dev and self.teacher_dev.accuracy):
            return None
        return self.student_dev.accuracy / self.teacher_dev.accuracy

    def summary(self) -> dict:
        """The content of result.json."""
        def dev(r: EvalResult | None) -> dict | None:
            return r.to_dict() if r else None

        return {"method": METHOD, "model": self.config.get("model"), "task": self.config.get("task"),
                "teacher": {**self.config.get("teacher", {}), "dev": dev(self.teacher_dev)},
                "student": {"type": self.student.type, "sha256": self.student.hash, "dev": dev(self.student_dev)},
                "kept": self.kept, "agreement_dev": self.agreement_dev, "best_epoch": self.best_epoch,
                "seconds": round(self.seconds, 3), "config": self.config}


def _answer_logprobs(lm, prefix, rows: list[list[int]], n_answer: list[int]) -> torch.Tensor:
    """Next-token log-probabilities at the positions that predict each row's last `n_answer` tokens, stacked."""
    ids, mask = pad_rows(rows, pad_id_of(lm), lm.device)
    hidden, _ = lm.forward(ids=ids, mask=mask, past=prefix)
    picked = [hidden[b, len(r) - n - 1: len(r) - 1] for b, (r, n) in enumerate(zip(rows, n_answer))]
    return F.log_softmax(lm.logits(torch.cat(picked)).float(), dim=-1)


def distill(lm, task: Task, teacher: Prompt, *, out: str | Path | None = None, seed: int = 0,
            progress: bool = True, overwrite: bool = False, teacher_ref: str | None = None,
            **options: Any) -> Distilled:
    """Train a soft prompt that answers like `teacher` on `lm` (see the module docstring).

    out: a run directory (config.json, history.jsonl, prompt.json + prompt.safetensors of the
      student, predictions_dev.jsonl, result.json), refused if it holds a run unless `overwrite`.
    teacher_ref: where the teacher came from (recorded in config.json).
    """
    cfg = make_config(**options)
    if not getattr(lm, "is_white_box", False):
        raise ConfigError(f"distill trains soft vectors: it needs a local model, not {lm.model_id!r}")
    wb = WhiteBox(lm, progress=False)
    ap = applier_for(teacher)
    check_model(teacher, lm, task)
    ap.check(teacher, wb, task)
    if ap.stages(teacher) != 1:
        raise ConfigError(f"a {teacher.type} prompt answers in {ap.stages(teacher)} stages; distill takes a "
                          "prompt of one (its output distribution is read on one condition)")
    inputs = list(dict.fromkeys(ex.input for ex in [*task.train, *task.dev]))  # unlabelled, each once
    if not inputs:
        raise ConfigError(f"{task.source}: distill needs train or dev inputs")
    sel = list(dict.fromkeys(ex.input for ex in task.dev)) or inputs  # where epochs are compared with the teacher
    ins = cfg.instruction or getattr(teacher, "instruction", None) or task.instruction
    instruction = "" if ins == "none" else ins
    position = cfg.position or getattr(teacher, "position", "after_header")
    classification = task.is_classification
    layout = build_layout(lm, instruction, [], task.labels if classification else None)
    config = {"method": METHOD, "options": dataclasses.asdict(cfg), "model": lm.model_id, "task": task.name,
              "data": task.source, "seed": seed,
              "teacher": {"path": teacher_ref, "type": teacher.type, "sha256": teacher.hash, "method": teacher.method}}

    rd = RunDir(out) if out is not None else None
    if rd is not None:
        if rd.read_config() is not None:
            if not overwrite:
                raise ConfigError(f"{rd.path} already holds a run; pass --overwrite to replace it, or choose "
                                  "another --out")
            rd.clear()
        rd.write_config(config)
    ctx = RunContext(seed=seed, run_dir=None, progress=progress, log=rd.log if rd else None)
    ctx.seed_everything()
    t0 = time.perf_counter()

    # --- the teacher's outputs on the unlabelled inputs (no gold label is read) ------------------------
    if classification:
        t_logp = torch.log_softmax(classify_scores(lm, task, teacher, [Example(x, "") for x in inputs]), dim=-1)
        names = task.label_names
        said = {x: names[i] for x, i in zip(inputs, t_logp.argmax(-1).tolist())}
        cands = label_candidates(layout, task)

        def loss_fn(prefix, rows, batch):
            s = score_candidates(lm, prefix, rows, [cands] * len(rows))  # (B, labels)
            target = t_logp[batch].to(s.device)
            return F.kl_div(torch.log_softmax(s.float(), -1), target, log_target=True, reduction="batchmean")
    else:
        answers = ap.generate(teacher, wb, task, inputs, GenerationConfig(max_tokens=cfg.answer_tokens))
        said = dict(zip(inputs, answers))
        t_cond = ap.condition(teacher, wb, task, inputs)  # the teacher's cached prefix and rows
        targets = [layout.answer(a, close=True) for a in answers]

        def loss_fn(prefix, rows, batch):
            n = [len(targets[i]) for i in batch]
            with torch.no_grad():
                lt = _answer_logprobs(lm, t_cond.prefix, [t_cond.rows[i] + targets[i] for i in batch], n)
            ls = _answer_logprobs(lm, prefix, [r + targets[i] for r, i in zip(rows, batch)], n)
            return F.kl_div(ls, lt, log_target=True, reduction="batchmean")

    # the trainer sees the inputs labelled by the teacher: its dev score is agreement with the teacher
    student_task = Task(name=task.name, kind=task.kind, train=[Example(x, said[x]) for x in inputs],
                        dev=[Example(x, said[x]) for x in sel], labels=dict(task.labels), instruction=task.instruction,
                        metric=task.metric, source=task.source)
    init_ids = init_token_ids(lm, task, cfg.init, cfg.tokens, random.Random(seed), instruction)
    torch.manual_seed(seed)
    module = PromptTuningModule(lm, layout, init_ids, position, instruction)
    result = train(module, lm, student_task, layout, cfg.train_config(), ctx, loss_fn=loss_fn)
    student = result.prompt
    student.model, student.method = model_key(lm), METHOD
    student.made_for(task)
    student.meta.update({"teacher_sha256": teacher.hash, "agreement_selection": result.best_dev})

    teacher_dev = student_dev = agreement = None
    if task.dev:
        teacher_dev = evaluate(lm, task, teacher, split="dev", progress=False)
        student_dev = evaluate(lm, task, student, split="dev", progress=False)
        if classification:
            same = [a["pred"] == b["pred"] for a, b in zip(teacher_dev.predictions, student_dev.predictions)]
            agreement = sum(same) / len(same)
    run = Distilled(student, teacher_dev, student_dev, agreement, result.best_epoch, time.perf_counter() - t0,
                    config, rd.path if rd else None)
    if rd is not None:
        student.save(rd.path)
        if student_dev is not None:
            rd.write_predictions("dev", student_dev.predictions)
        rd.write_result(run.summary())
        rd.close()
    return run


__all__ = ["distill", "DistillConfig", "Distilled", "make_config"]
