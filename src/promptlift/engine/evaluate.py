"""The one evaluation engine, used by every method, the CLI and the benchmarks.

For a white-box model it
- encodes the constant part of the prompt (chat header, soft tokens,
  instruction, demonstrations) once and reuses its key/value cache for every
  example (`Prompt.prefix`);
- runs examples in length-sorted batches (little padding);
- computes logits only where something is scored, and scores each label's full
  words from the example's own cache (`score_candidates`).

Classification is rank classification: the predicted label is the one whose
label words have the highest total log-probability log P(words | prompt).
No length normalisation by default: the total is the probability of the
whole string, which does not depend on how the tokenizer splits it, whereas a
per-token mean favours labels that happen to split into more (near-certain)
continuation tokens. The prior bias of a small model across labels is what
contextual calibration (`calibrate=True`) removes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..artifacts import Prompt, TextPrompt
from ..lm.base import GenerationConfig
from ..metrics import get_metric, normalize, summarize
from ..task import Example, Task
from .decode import decode
from .scoring import score_candidates

CONTENT_FREE = ("N/A", "", "[MASK]")  # Zhao et al. 2021


@dataclass
class EvalResult:
    """Score of a prompt on a split, with its interval and per-example predictions."""

    accuracy: float
    n: int
    ci95: list[float]
    per_class: dict = field(default_factory=dict)
    predictions: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    split: str = "test"

    @property
    def examples_per_second(self) -> float:
        return self.n / self.seconds if self.seconds else 0.0

    def to_dict(self, with_predictions: bool = False) -> dict:
        d = asdict(self)
        if not with_predictions:
            d.pop("predictions")
        d["examples_per_second"] = self.examples_per_second
        return d


def evaluate(lm, task: Task, prompt: Prompt | None = None, *, split: str = "test", limit: int | None = None,
             examples: Sequence[Example] | None = None, batch_size: int = 16, max_new_tokens: int = 32,
             progress: bool = True) -> EvalResult:
    """Score `prompt` (default: the task's instruction, zero-shot) on a split of `task`."""
    prompt = prompt or TextPrompt(instruction=task.instruction)
    exs = list(examples) if examples is not None else task.split(split)
    if limit is not None:
        exs = exs[:limit]
    t0 = time.perf_counter()
    if lm.is_white_box:
        prompt.check_model(lm)
        with torch.no_grad():
            if task.is_classification:
                preds, extra = _classify_hf(lm, task, prompt, exs, batch_size, progress)
            else:
                preds, extra = _generate_hf(lm, task, prompt, exs, batch_size, max_new_tokens, progress)
    else:
        preds, extra = _blackbox(lm, task, prompt, exs, max_new_tokens)
    seconds = time.perf_counter() - t0
    golds = [ex.output for ex in exs]
    if task.is_classification:
        scores = [float(p == g) for p, g in zip(preds, golds)]
        summary = summarize(scores, golds, preds)
    else:
        metric = get_metric(task.metric)
        scores = [metric(p, g) for p, g in zip(preds, golds)]
        summary = summarize(scores)
    records = [{"input": ex.input, "gold": ex.output, "pred": p, "score": s, **e}
               for ex, p, s, e in zip(exs, preds, scores, extra)]
    return EvalResult(summary["accuracy"], summary["n"], summary["ci95"], summary.get("per_class", {}),
                      records, seconds, split)


def _batches(order: list[int], batch_size: int):
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


def label_candidates(layout, task: Task) -> list[list[int]]:
    """Token ids of every label's words, in `task.labels` order."""
    return [layout.answer(words) for words in task.labels.values()]


def classify_scores(lm, task: Task, prompt: Prompt, exs: Sequence[Example], batch_size: int = 16,
                    progress: bool = False, layout=None, prefix=None) -> torch.Tensor:
    """(N, labels) total log-probabilities of each label's words (calibrated if the prompt says)."""
    layout = layout or prompt.layout(lm, task)
    if prefix is None:
        prefix = prompt.prefix(lm, layout)
    rows = prompt.rows(lm, layout, task, exs)
    cands = label_candidates(layout, task)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))  # longest first: peak memory up front
    out = torch.empty(len(rows), len(cands))
    bar = tqdm(total=len(rows), desc="eval", unit="ex", disable=not progress, leave=False)
    for idx in _batches(order, batch_size):
        s = score_candidates(lm, prefix, [rows[i] for i in idx], [cands] * len(idx))
        out[torch.tensor(idx)] = s.float().cpu()
        bar.update(len(idx))
    bar.close()
    if prompt.calibrate:
        out = calibrate(out, content_free_scores(lm, task, prompt, layout, prefix))
    return out


def content_free_scores(lm, task: Task, prompt: Prompt, layout, prefix) -> torch.Tensor:
    """(len(CONTENT_FREE), labels) label scores for content-free inputs under this prompt."""
    cf = [Example(x, task.label_names[0]) for x in CONTENT_FREE]
    rows = prompt.rows(lm, layout, task, cf)
    cands = label_candidates(layout, task)
    return score_candidates(lm, prefix, rows, [cands] * len(rows)).float().cpu()


def calibrate(scores: torch.Tensor, cf_scores: torch.Tensor) -> torch.Tensor:
    """Contextual calibration: divide label probabilities by the mean content-free ones.

    scores: (N, L) log-probabilities; cf_scores: (M, L). Returns log p(l|x) - log p_cf(l),
    with p renormalised over the labels (W = diag(p_cf)^-1, b = 0 in Zhao et al. 2021).
    """
    p_cf = torch.softmax(cf_scores, dim=-1).mean(0)  # (L,)
    return torch.log_softmax(scores, dim=-1) - torch.log(p_cf)


def _classify_hf(lm, task, prompt, exs, batch_size, progress):
    scores = classify_scores(lm, task, prompt, exs, batch_size, progress)
    names = task.label_names
    preds = [names[i] for i in scores.argmax(-1).tolist()]
    extra = [{"scores": {n: round(float(v), 4) for n, v in zip(names, row)}} for row in scores]
    return preds, extra


def _generate_hf(lm, task, prompt, exs, batch_size, max_new_tokens, progress):
    layout = prompt.layout(lm, task)
    prefix = prompt.prefix(lm, layout)
    rows = prompt.rows(lm, layout, task, exs)
    cfg = GenerationConfig(max_tokens=max_new_tokens, stop=layout.stop)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    preds = [""] * len(rows)
    bar = tqdm(total=len(rows), desc="generate", unit="ex", disable=not progress, leave=False)
    for idx in _batches(order, batch_size):
        batch = [rows[i] for i in idx]
        if prompt.reasoning:
            outs = _reason_then_answer(lm, prefix, batch, prompt.reasoning, cfg)
        else:
            outs = [o[0] for o in decode(lm, prefix, batch, cfg)]
        for i, o in zip(idx, outs):
            preds[i] = o
        bar.update(len(idx))
    bar.close()
    return preds, [{} for _ in exs]


def generate_with_prompt(lm, prompt: Prompt, texts: Sequence[str], *, max_tokens: int = 64,
                         temperature: float = 0.0, n: int = 1, seed: int | None = None) -> list[str]:
    """Answer raw user texts through `prompt` (text, soft or prefix): its instruction,
    demonstrations and soft tokens are applied exactly as in evaluation."""
    if not lm.is_white_box:
        from ..template import messages

        outs = lm.generate([messages(prompt.instruction, prompt.demos, t) for t in texts],
                           GenerationConfig(n=n, max_tokens=max_tokens, temperature=temperature, seed=seed))
        return [o[0] for o in outs]
    prompt.check_model(lm)
    with torch.no_grad():
        layout = prompt.layout(lm, None)
        prefix = prompt.prefix(lm, layout)
        rows = prompt.rows(lm, layout, None, [Example(t, "") for t in texts])
        cfg = GenerationConfig(n=n, max_tokens=max_tokens, temperature=temperature, stop=layout.stop, seed=seed)
        return [o[0] for o in decode(lm, prefix, rows, cfg)]


ANSWER_TRIGGER = "Therefore, the answer is"


def _reason_then_answer(lm, prefix, rows, trigger: str, cfg: GenerationConfig, reason_tokens: int = 96) -> list[str]:
    """Zero-shot-CoT's two stages (Kojima et al. 2022): reason after the trigger, then extract the answer."""
    stage1 = [r + lm.encode(trigger) for r in rows]
    reasons = [o[0] for o in decode(lm, prefix, stage1, GenerationConfig(max_tokens=reason_tokens))]
    stage2 = [r + lm.encode(f" {reason}\n{ANSWER_TRIGGER}") for r, reason in zip(stage1, reasons)]
    answers = [o[0] for o in decode(lm, prefix, stage2, GenerationConfig(max_tokens=cfg.max_tokens, stop=["\n"]))]
    return [a.strip().rstrip(".").strip() for a in answers]


def match_label(text: str, task: Task) -> str:
    """Map generated text to a label: exact words, then the earliest label mentioned, else the first label."""
    t = normalize(text)
    words = {lab: normalize(w) for lab, w in task.labels.items()}
    for lab, w in words.items():
        if t == w or t == normalize(lab):
            return lab
    hits = [(t.find(w), -len(w), lab) for lab, w in words.items() if w and w in t]
    if hits:
        return min(hits)[2]
    return task.label_names[0]


def _blackbox(lm, task, prompt, exs, max_new_tokens):
    """Endpoints without white-box access: generate, then match (classification) or compare."""
    from ..template import messages

    labels = task.labels if task.is_classification else None
    instr = prompt.instruction
    msgs = [messages(instr, prompt.demos, ex.input, labels) for ex in exs]
    outs = lm.generate(msgs, GenerationConfig(max_tokens=max_new_tokens, temperature=0.0))
    texts = [o[0] if o else "" for o in outs]
    if task.is_classification:
        return [match_label(t, task) for t in texts], [{"raw": t} for t in texts]
    return texts, [{} for _ in exs]
