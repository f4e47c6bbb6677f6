"""The one evaluation engine, used by every method, the CLI, the proxy and the benchmarks.

    evaluate(lm, task, prompt) -> EvalResult

The prompt is applied by its type's applier (`engine.apply`) on the backend of
`lm` (`engine.backends`): a local model runs in-process, an endpoint gets the
same rendered messages over HTTP. This module never asks what kind of prompt
it holds.

Classification is rank classification: the predicted label is the one whose
label words have the highest total log-probability log P(words | prompt).
No length normalisation: the total is the probability of the whole string,
which does not depend on how the tokenizer splits it, whereas a per-token mean
favours labels that split into more (near-certain) continuation tokens. The
prior bias of a small model across labels is what `Calibrated` removes.

An endpoint that returns no log-probabilities classifies by generation: the
answer (constrained to the label words where the endpoint has guided decoding)
is matched to the label words; an answer that matches none is counted wrong and
reported as `unparsed` (never given to some label).
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ..artifacts import Prompt, TextPrompt
from ..errors import ArtifactError, UnsupportedError
from ..lm.base import GenerationConfig, same_model
from ..metrics import get_metric, normalize, summarize
from ..reporter import Console, Quiet, Reporter
from ..task import Example, Task
from .apply import applier_for, calibrate, label_words
from .backends import backend_for

CLASSIFY_MAX_TOKENS = 16  # generation fallback: enough for label words, short enough to stay on topic


@dataclass
class EvalResult:
    """Score of a prompt on a split, with its interval and per-example predictions.

    unparsed: answers that matched no label (generation fallback on endpoints without log-probabilities).
    scoring: how labels were decided: "logprobs" (rank classification) or "generate" (matched answers).
    prompt_tokens: mean positions the prompt puts before each input (`Applier.prompt_tokens`: instruction,
      demonstrations, template parts and virtual tokens alike), over the split's first `chunk_size` inputs;
      None where it cannot be told. prompt_tokens_unit: "tokens" on a local model; on an endpoint an
      estimate from characters (no tokenizer there), named as such.
    """

    accuracy: float
    n: int
    ci95: list[float]
    per_class: dict = field(default_factory=dict)
    predictions: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    split: str = "test"
    unparsed: int = 0
    scoring: str = ""
    prompt_tokens: float | None = None
    prompt_tokens_unit: str = ""

    @property
    def examples_per_second(self) -> float:
        return self.n / self.seconds if self.seconds else 0.0

    def to_dict(self, with_predictions: bool = False) -> dict:
        d = asdict(self)
        if not with_predictions:
            d.pop("predictions")
        d["examples_per_second"] = self.examples_per_second
        return d


def check_model(prompt: Prompt, lm, task: Task | None = None, reporter: Reporter | None = None) -> None:
    """Refuse a prompt with trained tensors on another model than the one it was made for; note to
    `reporter` (default: stderr) a text prompt made on another model, or a prompt made for another task."""
    note = (reporter or Console(bars=False)).note
    if not same_model(prompt.model, lm):
        if not prompt.text_only:
            raise ArtifactError(f"prompt was made for model {prompt.model!r}, not {lm.model_id!r}")
        note(f"note: this text prompt was found on model {prompt.model!r}; applying it as text to {lm.model_id!r}")
    if task is not None and prompt.task and prompt.task != task.name:
        note(f"note: this prompt was made for task {prompt.task!r}, not {task.name!r}")
    if task is not None:
        check_labels(prompt, task)


def prompt_labels(prompt: Prompt) -> set[str]:
    """The labels an artifact's demonstrations (and any nested artifact's) answer with (none where they answer
    with their reasoning)."""
    import dataclasses

    if not prompt.demos_are_labels:
        return set()

    out = {ex.output for f in dataclasses.fields(prompt) if f.metadata.get("kind") == "examples"
           for ex in getattr(prompt, f.name) or ()}
    for child in prompt.children():
        out |= prompt_labels(child)
    return out


def check_labels(prompt: Prompt, task: Task) -> None:
    """Refuse a prompt made for another label set: demonstrations that answer with labels the classification
    task does not have, or trained vectors whose recorded labels (`Prompt.labels`) are not the task's (a text
    prompt's instruction is portable). Reads only the artifact, so it runs before a model loads."""
    if not task.is_classification:
        return
    recorded = set(getattr(prompt, "labels", None) or ())
    if recorded and not prompt.text_only and recorded != set(task.labels):
        raise ArtifactError(f"this {prompt.type} prompt was trained for labels {', '.join(sorted(recorded))}; task "
                            f"{task.name!r} has {', '.join(task.labels)}: it was made for another label set")
    foreign = sorted(prompt_labels(prompt) - set(task.labels))
    if foreign:
        raise ArtifactError(f"the prompt's demonstrations answer with label(s) {', '.join(map(repr, foreign))} that "
                            f"task {task.name!r} does not have (its labels: {', '.join(task.labels)}); it was made "
                            "for another label set")


def evaluate(lm, task: Task, prompt: Prompt | None = None, *, split: str = "test", limit: int | None = None,
             examples: Sequence[Example] | None = None, batch_size: int = 16, max_new_tokens: int = 32,
             progress: bool = True, on_records: Callable[[list[dict]], None] | None = None,
             done: Sequence[dict] = (), chunk_size: int = 256, reporter: Reporter | None = None) -> EvalResult:
    """Score `prompt` (default: the task's instruction, zero-shot) on a split of `task`.

    on_records: called with each chunk's records as soon as it is scored (a run directory writes
      predictions with it, so a killed evaluation loses at most one chunk).
    done: records of a killed evaluation of the same prompt; the examples they cover (a prefix of
      the split, checked by input) are not scored again.
    chunk_size: examples scored together (the prompt's shared prefix is encoded once per chunk).
    progress, reporter: progress bars (when `progress`) and notes go to `reporter` (default: stderr).
    """
    reporter = reporter or Console()
    bars = reporter if progress else Quiet()
    prompt = prompt or TextPrompt(instruction=task.instruction)
    exs = list(examples) if examples is not None else task.split(split)
    if limit is not None:
        exs = exs[:limit]
    backend = backend_for(lm, batch_size, bars if len(exs) <= chunk_size else None)
    ap = applier_for(prompt)
    check_model(prompt, lm, task, reporter)
    ap.check(prompt, backend, task)
    records = _reusable(done, exs)
    t0 = time.perf_counter()
    scoring, start = "", len(records)
    bar = (bars if len(exs) > chunk_size else Quiet()).progress(len(exs), f"eval {split}", initial=start, unit="ex")
    for i in range(start, len(exs), chunk_size):
        chunk = exs[i : i + chunk_size]
        preds, extra, scoring = _predict(ap, prompt, backend, task, [ex.input for ex in chunk], max_new_tokens)
        new = [{"input": ex.input, "gold": ex.output, "pred": p, "score": _score(task, p, ex.output), **e}
               for ex, p, e in zip(chunk, preds, extra)]
        records += new
        if on_records is not None:
            on_records(new)
        bar.update(len(chunk))
    bar.close()
    seconds = time.perf_counter() - t0
    golds = [ex.output for ex in exs]
    preds = [r["pred"] for r in records]
    scores = [r["score"] for r in records]
    summary = summarize(scores, golds, preds) if task.is_classification else summarize(scores)
    unparsed = sum(1 for r in records if r.get("parsed") is False)
    scoring = scoring or next((r.get("scoring", "") for r in records), "")
    if task.is_classification and not scoring:
        scoring = "generate" if any("raw" in r for r in records) else "logprobs"
    tokens = mean_prompt_tokens(ap, prompt, backend, task, [ex.input for ex in exs[:chunk_size]])
    return EvalResult(summary["accuracy"], summary["n"], summary["ci95"], summary.get("per_class", {}),
                      records, seconds, split, unparsed, scoring if task.is_classification else "",
                      tokens, backend.positions_unit if tokens is not None else "")


def mean_prompt_tokens(ap, prompt: Prompt, backend, task: Task, inputs: Sequence[Any]) -> float | None:
    """Mean positions `prompt` puts before each of `inputs` (`Applier.prompt_tokens`), rounded to 0.01;
    None for no inputs or a prompt that has no condition to count."""
    if not inputs:
        return None
    try:
        per = ap.prompt_tokens(prompt, backend, task, list(inputs))
    except UnsupportedError:
        return None
    return round(sum(per) / len(per), 2)


def _reusable(done: Sequence[dict], exs: Sequence[Example]) -> list[dict]:
    """The leading records of `done` that belong to `exs` (same input and gold, in order)."""
    out = []
    for rec, ex in zip(done, exs):
        if not isinstance(rec, dict) or rec.get("input") != ex.input or rec.get("gold") != ex.output or "pred" not in rec:
            break
        out.append(dict(rec))
    return out


def _score(task: Task, pred, gold: str) -> float:
    if task.is_classification:
        return float(pred == gold)
    return get_metric(task.metric)(pred, gold)


@dataclass
class LabelAnswer:
    """A classifier's answer to one input.

    label: the predicted label's name (None: a generated answer that matched no label).
    scores: label name -> score (log-probability of its words; calibrated for a calibrated prompt), in the
      task's label order, when labels were ranked; None when decided by generation.
    raw: the generated answer, when decided by generation.
    """

    label: str | None
    scores: dict[str, float] | None = None
    raw: str | None = None


def classify(ap, prompt: Prompt, backend, task: Task, inputs: Sequence[Any]) -> tuple[list[LabelAnswer], str]:
    """Each input's label, decided the one way the engine decides it, and how ("logprobs" | "generate").

    Rank classification where the backend gives label log-probabilities; else a short generation matched to
    the label words (`match_label`), constrained to them where the endpoint has guided decoding (`OpenAIModel`).
    `evaluate` and the proxy's classifier routes both answer with this.
    """
    names = task.label_names
    if backend.can_score_labels:
        scores = ap.label_scores(prompt, backend, task, inputs)
        return [LabelAnswer(names[int(row.argmax())], {n: float(v) for n, v in zip(names, row)})
                for row in scores], "logprobs"
    cfg = GenerationConfig(max_tokens=CLASSIFY_MAX_TOKENS, stop=["\n"], choices=label_words(task))
    texts = ap.generate(prompt, backend, task, inputs, cfg)
    return [LabelAnswer(match_label(t, task), None, t) for t in texts], "generate"


def _predict(ap, prompt, backend, task, inputs, max_new_tokens) -> tuple[list, list[dict], str]:
    """Predictions and per-example extras for `inputs`, and how labels were decided."""
    if task.is_classification:
        answers, how = classify(ap, prompt, backend, task, inputs)
        if how == "logprobs":
            return [a.label for a in answers], [{"scores": {n: round(v, 4) for n, v in a.scores.items()}}
                                                for a in answers], how
        return [a.label for a in answers], [{"raw": a.raw, "parsed": a.label is not None} for a in answers], how
    texts = ap.generate(prompt, backend, task, inputs, GenerationConfig(max_tokens=max_new_tokens))
    return texts, [{} for _ in inputs], ""


def classify_scores(lm, task: Task, prompt: Prompt, exs: Sequence[Example], batch_size: int = 16,
                    reporter: Reporter | None = None) -> torch.Tensor:
    """(N, labels) label scores of `prompt` on `exs` (calibrated if the prompt is)."""
    backend = backend_for(lm, batch_size)
    ap = applier_for(prompt)
    check_model(prompt, lm, reporter=reporter)
    ap.check(prompt, backend, task)
    return ap.label_scores(prompt, backend, task, [ex.input for ex in exs])


def answer_scores(lm, task: Task, prompt: Prompt, exs: Sequence[Example], batch_size: int = 16) -> torch.Tensor:
    """(N,) total log-probability of each example's reference output under `prompt` (then the end of the answer)."""
    backend = backend_for(lm, batch_size)
    ap = applier_for(prompt)
    check_model(prompt, lm)
    ap.check(prompt, backend, task)
    return ap.answer_scores(prompt, backend, task, [ex.input for ex in exs], [ex.output for ex in exs])


def reference_logprob(lm, task: Task, prompt: Prompt, exs: Sequence[Example]) -> float | None:
    """Mean log-probability of the reference outputs of `exs` under `prompt` (generation tasks): how
    ties on the metric are broken. None where the model cannot score a given answer (a chat endpoint,
    a reasoning prompt)."""
    try:
        return float(answer_scores(lm, task, prompt, exs).mean())
    except UnsupportedError:
        return None


def gold_label_logprob(task: Task, record: dict) -> float | None:
    """log P(gold label) of a classification record, normalised over the task's labels (its label
    scores through a softmax): minus the cross-entropy `example_losses` gives. It comes with every
    record scored by log-probabilities, at no extra call, and breaks ties on accuracy. None where the
    labels were decided by generation (no scores)."""
    scores = record.get("scores")
    if not scores or any(n not in scores for n in task.label_names) or record.get("gold") not in scores:
        return None
    row = torch.tensor([float(scores[n]) for n in task.label_names])
    return float(torch.log_softmax(row, dim=0)[task.label_names.index(record["gold"])])


def example_losses(lm, task: Task, prompt: Prompt, exs: Sequence[Example]) -> torch.Tensor:
    """(N,) what a forward-only search minimises for each example, one definition for every task kind.

    Classification: cross-entropy of the gold label over the label scores (the label-word
    objective of BBT, BDPL and AutoPrompt). Generation: minus the log-probability of the reference
    output, its tokens and the end of the answer (the objective the shared trainer's "lm" loss
    uses), summed over tokens so that an endpoint, which scores text and not token counts, gives
    the same number.
    """
    if task.is_classification:
        scores = classify_scores(lm, task, prompt, exs)  # (N, labels)
        gold = torch.tensor([task.label_names.index(ex.output) for ex in exs])
        return F.cross_entropy(scores, gold, reduction="none")
    return -answer_scores(lm, task, prompt, exs)


def label_candidates(layout, task: Task) -> list[list[int]]:
    """Token ids of every label's words after `layout`'s answer opening, in `task.labels` order."""
    return [layout.answer(words) for words in label_words(task)]


def generate_with_prompt(lm, prompt: Prompt, inputs: Sequence[Any], *, max_tokens: int = 64,
                         temperature: float = 0.0, seed: int | None = None, task: Task | None = None) -> list[str]:
    """Answer raw user inputs (texts or message lists) through `prompt` (text, soft or prefix),
    applied exactly as in evaluation."""
    backend = backend_for(lm)
    ap = applier_for(prompt)
    check_model(prompt, lm)
    ap.check(prompt, backend, task)
    cfg = GenerationConfig(max_tokens=max_tokens, temperature=temperature, seed=seed)
    return ap.generate(prompt, backend, task, list(inputs), cfg)


def match_label(text: str, task: Task) -> str | None:
    """Map generated text to a label: its words (or name) exactly, else the earliest label
    mentioned as whole words; None if it mentions none (an empty answer mentions none)."""
    t = normalize(text)
    if not t:
        return None
    cands = {lab: [c for c in dict.fromkeys((normalize(w), normalize(lab))) if c] for lab, w in task.labels.items()}
    for lab, cs in cands.items():
        if t in cs:
            return lab
    hits = []
    for lab, cs in cands.items():
        for c in cs:
            m = re.search(r"(?<!\w)" + re.escape(c) + r"(?!\w)", t)
            if m:
                hits.append((m.start(), -len(c), lab))
    return min(hits)[2] if hits else None


__all__ = ["EvalResult", "evaluate", "classify", "LabelAnswer", "classify_scores", "generate_with_prompt", "match_label", "calibrate",
           "label_candidates", "check_model", "check_labels"]
