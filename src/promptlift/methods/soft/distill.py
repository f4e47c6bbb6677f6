"""Distil a prompt into an input-level soft prompt (soft-prompt compression).

Wingate, Shoeybi & Sorensson 2022, "Prompt Compression and Contrastive Conditioning for Controllability
and Toxicity Reduction in Language Models"; Mu, Li & Goodman 2023, "Learning to Compress Prompts with
Gist Tokens". A student of k input vectors (prompt tuning's module) is trained with the one trainer
(`engine.train`, through its `loss` hook) to match a teacher prompt's output distribution on unlabelled
inputs: the task's train and dev inputs, no label read.

    promptlift optimize --method distill --teacher runs/prefix --tokens 20 --data DIR --out runs/prefix-soft
    promptlift distill runs/prefix --out runs/prefix-soft        # the same run (data and model: the teacher's)

Why: vLLM takes input embeddings (`prompt_embeds`) but no per-layer key/value prefixes, so a
`PrefixPrompt` (prefix-tuning, p-tuning v2) cannot be served there; and a long text prompt
(instruction + many demonstrations, `--teacher shots:16`) costs its tokens on every request, k vectors
cost k positions.

- classification: KL(teacher || student) of the distributions over the labels
  (softmax of each prompt's label scores, the scores rank classification uses);
  the teacher's are computed once;
- generation: KL(teacher || student) of the next-token distributions along the
  teacher's own greedy answer to each input.

The best epoch is the one whose predictions agree most with the teacher's on
the dev inputs (the trainer's dev score, on dev inputs labelled by the
teacher). Only after training are teacher and student scored against the gold
dev labels: `result.json` reports both (`teacher.dev`, `student.dev`), the
accuracy kept (`kept`) and how often they answer alike (`agreement_dev`).

Any one-stage prompt the local model applies can be the teacher (a text prompt
with demonstrations distils into soft vectors too); the student takes the
teacher's instruction and placement unless told otherwise.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from ...artifacts import POSITIONS, Prompt, TextPrompt, load
from ...engine.apply import applier_for
from ...engine.backends import WhiteBox
from ...engine.evaluate import check_model, classify_scores, evaluate, label_candidates
from ...engine.train import train
from ...errors import BudgetExceeded, ConfigError, PromptliftError
from ...lm.base import GenerationConfig
from ...lm.scoring import pad_id_of, pad_rows, score_candidates
from ...registry import register
from ...task import Example, Task
from ...template import build_layout
from ..base import Method
from ..shared import StudentOptions, balanced_sample, init_token_ids
from .prompt_tuning import PromptTuningModule

SHOTS = "shots:"


@dataclass
class DistillConfig(StudentOptions):
    """The teacher, the student's shape and the trainer's options."""

    allowed_positions: ClassVar[tuple[str, ...]] = ("", *POSITIONS)

    teacher: str = field(default="", metadata={
        "help": "the prompt to match: a run directory or prompt.json, or shots:N (the task's instruction with N "
                "class-balanced train demonstrations); from Python also a Prompt"})
    position: str = field(default="", metadata={"help": "after_header | prepend ('' = the teacher's)"})
    instruction: str = field(default="", metadata={"help": "text after the soft tokens ('' = the teacher's, "
                                                           "'none' = no text)"})
    answer_tokens: int = field(default=32, metadata={"help": "generation: tokens of the teacher's answers to match"})

    def __post_init__(self):
        super().__post_init__()
        if self.answer_tokens < 1:
            raise ValueError("answer_tokens must be >= 1")
        t = self.teacher
        if isinstance(t, Prompt):
            return
        if not t:
            raise ValueError("a teacher is required: --teacher RUN (a run directory or prompt.json) or shots:N")
        if t.startswith(SHOTS):
            n = t[len(SHOTS):]
            if not (n.isdigit() and int(n) >= 1):
                raise ValueError(f"teacher {t!r}: expected shots:N with N >= 1")
        elif not Path(t).exists():
            raise ValueError(f"teacher {t}: no such run directory or prompt file")


def _answer_logprobs(lm, prefix, rows: list[list[int]], n_answer: list[int]) -> torch.Tensor:
    """Next-token log-probabilities at the positions that predict each row's last `n_answer` tokens, stacked."""
    ids, mask = pad_rows(rows, pad_id_of(lm), lm.device)
    hidden, _ = lm.forward(ids=ids, mask=mask, past=prefix)
    picked = [hidden[b, len(r) - n - 1: len(r) - 1] for b, (r, n) in enumerate(zip(rows, n_answer))]
    return F.log_softmax(lm.logits(torch.cat(picked)).float(), dim=-1)


@register("distill")
class Distill(Method):
    """A teacher prompt (prefix, long text, ...) distilled into k input vectors that answer like it."""

    family = "soft"
    white_box = True
    Config = DistillConfig
    smoke = {"teacher": "shots:2", "tokens": 2, "epochs": 2, "batch_size": 8, "answer_tokens": 4}

    def config_record(self) -> dict:
        """The options for config.json: a teacher given as a Prompt object is recorded by its content hash."""
        rec = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)}
        if isinstance(rec["teacher"], Prompt):
            rec["teacher"] = f"sha256:{rec['teacher'].hash}"
        return rec

    def teacher(self, lm, task: Task, ctx) -> tuple[Prompt, dict]:
        """The teacher prompt, checked against `lm` and `task`, and its record {path, type, sha256, method}."""
        ref = self.config.teacher
        if isinstance(ref, Prompt):
            teacher, path = ref, None
        elif ref.startswith(SHOTS):
            demos = balanced_sample(task, int(ref[len(SHOTS):]), random.Random(ctx.seed))
            teacher, path = TextPrompt(instruction=task.instruction, demos=demos), ref
        else:
            teacher, path = load(ref), ref
        where = f"teacher {path or 'prompt'}"
        try:
            check_model(teacher, lm, task, ctx.reporter)
            applier_for(teacher).check(teacher, WhiteBox(lm), task)
        except PromptliftError as e:
            raise type(e)(f"{where}: {e}") from None
        stages = applier_for(teacher).stages(teacher)
        if stages != 1:
            raise ConfigError(f"{where}: a {teacher.type} prompt answers in {stages} stages; distill takes a "
                              "prompt of one (its output distribution is read on one condition)")
        return teacher, {"path": path, "type": teacher.type, "sha256": teacher.hash, "method": teacher.method}

    def fit(self, lm, task, ctx):
        c = self.config
        teacher, record = self.teacher(lm, task, ctx)
        inputs = list(dict.fromkeys(ex.input for ex in [*task.train, *task.dev]))  # unlabelled, each once
        if not inputs:
            raise ConfigError(f"{task.source}: distill needs train or dev inputs")
        sel = list(dict.fromkeys(ex.input for ex in task.dev)) or inputs  # where epochs are compared with the teacher
        ins = c.instruction or getattr(teacher, "instruction", None) or task.instruction
        instruction = "" if ins == "none" else ins
        position = c.position or getattr(teacher, "position", "after_header")
        layout = build_layout(lm, instruction, [], task.labels if task.is_classification else None)
        init_ids = init_token_ids(lm, task, c.init, c.tokens, random.Random(ctx.seed), instruction)
        torch.manual_seed(ctx.seed)
        module = PromptTuningModule(lm, layout, init_ids, position, instruction)
        meta = {"teacher": record, "teacher_sha256": teacher.hash}
        try:
            said, loss_fn = self._teacher_outputs(lm, task, teacher, layout, inputs, ctx)
        except BudgetExceeded as e:  # spent on reading the teacher: the student's start is kept
            ctx.note(f"{e}; keeping the student's starting prompt")
            with torch.no_grad():
                prompt = module.to_prompt()
            prompt.meta = {**prompt.meta, **meta, "stopped": "budget"}
            return prompt
        # the trainer sees the inputs labelled by the teacher: its dev score is agreement with the teacher
        student_task = Task(name=task.name, kind=task.kind, train=[Example(x, said[x]) for x in inputs],
                            dev=[Example(x, said[x]) for x in sel], labels=dict(task.labels),
                            instruction=task.instruction, metric=task.metric, source=task.source)
        result = train(module, lm, student_task, layout, c, ctx, loss=loss_fn)
        prompt = result.prompt
        prompt.meta = {**prompt.meta, **meta, "agreement_selection": result.best_dev}
        return prompt

    def _teacher_outputs(self, lm, task: Task, teacher: Prompt, layout, inputs: list[str], ctx):
        """What the teacher says on each input ({input: label or answer}) and the student's loss against it."""
        if task.is_classification:
            scores = classify_scores(lm, task, teacher, [Example(x, "") for x in inputs], reporter=ctx.reporter)
            t_logp = torch.log_softmax(scores, dim=-1)  # (N, labels)
            names = task.label_names
            said = {x: names[i] for x, i in zip(inputs, t_logp.argmax(-1).tolist())}
            cands = label_candidates(layout, task)

            def loss_fn(prefix, rows, batch):
                s = score_candidates(lm, prefix, rows, [cands] * len(rows))  # (B, labels)
                target = t_logp[batch].to(s.device)
                return F.kl_div(torch.log_softmax(s.float(), -1), target, log_target=True, reduction="batchmean")

            return said, loss_fn
        wb, ap = WhiteBox(lm), applier_for(teacher)
        answers = ap.generate(teacher, wb, task, inputs, GenerationConfig(max_tokens=self.config.answer_tokens))
        t_cond = ap.condition(teacher, wb, task, inputs)  # the teacher's cached prefix and rows
        targets = [layout.answer(a, close=True) for a in answers]

        def loss_fn(prefix, rows, batch):
            n = [len(targets[i]) for i in batch]
            with torch.no_grad():
                lt = _answer_logprobs(lm, t_cond.prefix, [t_cond.rows[i] + targets[i] for i in batch], n)
            ls = _answer_logprobs(lm, prefix, [r + targets[i] for r, i in zip(rows, batch)], n)
            return F.kl_div(ls, lt, log_target=True, reduction="batchmean")

        return dict(zip(inputs, answers)), loss_fn

    def summarize(self, lm, task, run, ctx) -> dict:
        """Teacher and student scored on the gold dev labels, the accuracy kept and their agreement."""
        teacher, record = self.teacher(lm, task, ctx)
        teacher_dev = student_dev = agreement = kept = None
        if task.dev:
            teacher_dev = evaluate(lm, task, teacher, split="dev", progress=False, reporter=ctx.reporter)
            student_dev = run.dev or evaluate(lm, task, run.prompt, split="dev", progress=False, reporter=ctx.reporter)
            if task.is_classification:
                same = [a["pred"] == b["pred"] for a, b in zip(teacher_dev.predictions, student_dev.predictions)]
                agreement = sum(same) / len(same)
            if teacher_dev.accuracy:
                kept = student_dev.accuracy / teacher_dev.accuracy
        dev = lambda r: r.to_dict() if r else None  # noqa: E731
        return {"teacher": {**record, "dev": dev(teacher_dev)},
                "student": {"type": run.prompt.type, "sha256": run.prompt.hash, "dev": dev(student_dev)},
                "kept": kept, "agreement_dev": agreement, "best_epoch": run.prompt.meta.get("best_epoch")}
