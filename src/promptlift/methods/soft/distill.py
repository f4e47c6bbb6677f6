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
teacher). Only after training are teacher, student and zero-shot scored against
the gold dev (and test) labels: `result.json` reports them (`teacher.dev|test`,
`student.dev|test`, `zero_shot`), the share of the teacher's gain over zero-shot
the student keeps (`kept_gain`: (student - zero) / (teacher - zero) per split),
each one's `prompt_tokens` and the teacher/student ratio (`prompt_tokens_ratio`),
the accuracy kept (`kept`), how often they answer alike (`agreement_dev`), and
the obvious cheap alternative scored the same way (`cheap_text`: the teacher's
instruction with as many of its demonstrations as fit in the student's prompt
tokens, at least one; `fits` says whether even that one fits).

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
        """Teacher, student, zero-shot and the cheap text alternative scored on the gold dev (and test) labels;
        the share of the teacher's gain kept, the prompt tokens of each and their agreement."""
        teacher, record = self.teacher(lm, task, ctx)
        ev = lambda p, split: evaluate(lm, task, p, split=split, progress=False, reporter=ctx.reporter)  # noqa: E731
        splits = [s for s, got in (("dev", task.dev), ("test", run.test)) if got]
        student = {"dev": run.dev, "test": run.test}
        for s in splits:
            student[s] = student[s] or ev(run.prompt, s)
        teacher_r = {s: ev(teacher, s) for s in splits}
        zero_prompt = TextPrompt(instruction=task.instruction)
        zero = {s: ev(zero_prompt, s) for s in splits}
        agreement = kept = None
        if "dev" in splits:
            if task.is_classification:
                same = [a["pred"] == b["pred"] for a, b in zip(teacher_r["dev"].predictions, student["dev"].predictions)]
                agreement = sum(same) / len(same)
            if teacher_r["dev"].accuracy:
                kept = student["dev"].accuracy / teacher_r["dev"].accuracy
        cheap = self._cheap_text(lm, task, teacher, student, splits, ctx)
        cheap_r = {s: ev(cheap, s) for s in splits} if cheap is not None else {}
        tokens = lambda r: next((x.prompt_tokens for x in r.values() if x is not None), None)  # noqa: E731
        t_tok, s_tok = tokens(teacher_r), tokens(student)
        dev = lambda r: r.to_dict() if r else None  # noqa: E731
        scores = lambda r: {s: r[s].accuracy for s in splits}  # noqa: E731
        return {"teacher": {**record, "dev": dev(teacher_r.get("dev")), "test": dev(teacher_r.get("test")),
                            "prompt_tokens": t_tok},
                "student": {"type": run.prompt.type, "sha256": run.prompt.hash, "dev": dev(student.get("dev")),
                            "test": dev(student.get("test")), "prompt_tokens": s_tok},
                "zero_shot": {**scores(zero), "prompt_tokens": tokens(zero)},
                "kept_gain": kept_gain(scores(student), scores(teacher_r), scores(zero)),
                "prompt_tokens_ratio": round(t_tok / s_tok, 2) if t_tok and s_tok else None,
                "cheap_text": None if cheap is None else {
                    "demos": len(cheap.demos), "fits": tokens(cheap_r) <= (s_tok or 0),
                    "prompt_tokens": tokens(cheap_r), **scores(cheap_r),
                    "kept_gain": kept_gain(scores(cheap_r), scores(teacher_r), scores(zero))},
                "kept": kept, "agreement_dev": agreement, "best_epoch": run.prompt.meta.get("best_epoch")}

    def _cheap_text(self, lm, task, teacher, student, splits, ctx) -> TextPrompt | None:
        """The obvious cheap alternative to the student: the teacher's instruction with as many of its
        demonstrations (a teacher with none: class-balanced train ones) as fit in the student's prompt tokens,
        at least one (then it does not fit: `fits` says so). None without demonstrations to take."""
        if not splits:
            return None
        budget = student[splits[0]].prompt_tokens or 0
        demos = list(getattr(teacher, "demos", None) or [])
        if not demos and task.train:
            demos = balanced_sample(task, min(len(task.train), 16), random.Random(ctx.seed))
        if not demos:
            return None
        instruction = getattr(teacher, "instruction", None) or task.instruction
        probe = [ex.input for ex in task.split(splits[0])[:16]]
        backend = WhiteBox(lm, common_prefix=False)  # counting needs no forward pass

        def tokens(m: int) -> float:
            p = TextPrompt(instruction=instruction, demos=demos[:m])
            per = applier_for(p).prompt_tokens(p, backend, task, probe)
            return sum(per) / len(per)

        m = 1
        while m < len(demos) and tokens(m + 1) <= budget:
            m += 1
        return TextPrompt(instruction=instruction, demos=demos[:m])


def kept_gain(student: dict, teacher: dict, zero: dict) -> dict:
    """Per split, the share of the teacher's gain over zero-shot that the student keeps:
    (student - zero) / (teacher - zero); None where the teacher gains nothing over zero-shot."""
    return {s: (round((student[s] - zero[s]) / (teacher[s] - zero[s]), 4) if teacher[s] > zero[s] else None)
            for s in student}
