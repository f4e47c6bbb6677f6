"""The `local` upstream: the in-process model, with concurrent requests batched into one forward pass.

Requests wait up to `limits.batch_window_ms` for others, then run together
(at most `limits.max_batch`) on one worker thread that owns the model. Each
request is conditioned by its artifact's own applier (`promptlift.engine.apply`),
exactly as `generate_with_prompt` conditions it: a cached prefix (holding the
soft vectors, the learned keys/values, or the text's constant part) and the
row's own tokens. Greedy requests then decode in ONE batch whatever their
artifacts: each row attends to its own prefix (prefixes of different lengths are
padded and masked), so a batch of requests carrying different soft prompts is
one forward pass per step, with the same answers as serving each alone.

Each request's condition is its applier's `generation_condition` on a
`WhiteBox` that keeps a `PrefixCache`: the constant prefix of a soft, prefix or
token prompt is computed once per artifact and kept. Sampled requests
(temperature > 0) decode alone, so their seed gives the same answer as alone;
prompts answered in more than one stage (`Applier.stages`, e.g. `Reasoning`)
run through `generate_with_prompt` one request at a time.

A classifier route's requests (`classify`) are answered with the engine's own
`classify` on the same backend, one batch per artifact: the label `eval`
predicts, with every label's score.

Log-probabilities, computed through the applied prompt on the same condition:

- a chat request with `logprobs` gets the distribution of the first generated
  token (`first_token_logprobs`): what a black-box client ranks labels with;
- a completions request with `echo` and `max_tokens: 0` scores the text after
  `Output:` in `Input: {input}\nOutput: {answer}` (`serve.apply.scoring_input`):
  {input} is rendered through the prompt exactly as the engine renders it and
  {answer} is the model's answer to it (`score_answers`), so its log-probability
  is the engine's `label_scores` of those words.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch

import torch.nn.functional as F

from ..artifacts import Prompt
from ..engine.apply import applier_for
from ..engine.backends import Cond, PrefixCache, WhiteBox
from ..lm.decode import decode
from ..engine.evaluate import LabelAnswer, check_model, classify, generate_with_prompt
from ..lm.scoring import pad_id_of, pad_rows
from ..kv import KV, merge_prefixes
from ..lm.base import GenerationConfig
from .apply import scoring_input


@dataclass
class Answer:
    """One generated answer and what it cost.

    first: with `top_logprobs` asked, the first generated token's most likely tokens as
      (token id, log-probability), most likely first.
    scored: for an echo (scoring) request, `ScoredText`.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish: str  # "stop" or "length"
    first: list[tuple[int, float]] | None = None
    scored: "ScoredText | None" = None
    label: LabelAnswer | None = None  # a classifier's answer: the label and every label's score
    prompt_positions: float = 0.0  # of `prompt_tokens`, the positions the prompt put before the input
    served: str | None = None  # the content hash of the artifact that answered (a selector's chosen member)


@dataclass
class ScoredText:
    """Per-token log-probabilities of a scored text (the legacy completions `logprobs` object).

    token_logprobs is None where the text is not what the model reads there (see `score_answers`).
    top: for the scored tokens, their most likely alternatives as (token id, log-probability).
    """

    token_ids: list[int]
    tokens: list[str]
    token_logprobs: list[float | None]
    text_offset: list[int]
    top: list[list[tuple[int, float]] | None]


@dataclass
class _Job:
    prompt: Prompt
    conversation: Any
    cfg: GenerationConfig
    task: Any
    future: Any = None
    loop: Any = None
    result: Answer | None = None
    error: BaseException | None = None
    cond: Cond | None = None
    row: int = 0
    batch: int = 0  # how many rows decoded together with this one (itself included)
    top_logprobs: int | None = None  # chat `logprobs`: how many alternatives of the first token (None: not asked)
    score: bool = False  # completions `echo` + `max_tokens: 0`: score the text, generate nothing
    classify: bool = False  # a classifier route: answer with the label (`task` holds the labels)
    first: list[tuple[int, float]] | None = None


def check_local(prompt: Prompt, lm, task=None) -> None:
    """Refuse, at start-up, an artifact this local model cannot apply (made for another model, ...)."""
    check_model(prompt, lm)
    applier_for(prompt).check(prompt, WhiteBox(lm), task)


def _answer(lm, cond: Cond, row: int, text: str, cfg: GenerationConfig) -> Answer:
    prefix_len = int(cond.prefix.real_lengths()[0]) if cond.prefix is not None else 0
    n_out = len(lm.encode(text)) if text else 0
    return Answer(text, prefix_len + len(cond.rows[row]), n_out, "length" if n_out >= cfg.max_tokens else "stop")


def _merged_cfg(cfg: GenerationConfig, cond: Cond) -> GenerationConfig:
    return replace(cfg, stop=list(dict.fromkeys([*cfg.stop, *cond.stop])))


def run_jobs(lm, jobs: list[_Job], cache: PrefixCache | None = None) -> None:
    """Answer `jobs` (on the model's thread); each gets `result` or `error`."""
    wb = WhiteBox(lm, prefixes=cache)
    jobs = _served(wb, jobs)
    groups: dict[tuple, list[_Job]] = {}
    scoring: dict[tuple, list[_Job]] = {}
    labels: dict[tuple, list[_Job]] = {}
    for j in jobs:
        if j.score:
            scoring.setdefault((id(j.prompt), id(j.task), j.top_logprobs), []).append(j)
        elif j.classify:
            labels.setdefault((id(j.prompt), id(j.task)), []).append(j)
        elif applier_for(j.prompt).stages(j.prompt) > 1:
            _alone(lm, j)
        else:
            groups.setdefault((id(j.prompt), id(j.task), _cfg_key(j.cfg)), []).append(j)
    for group in scoring.values():
        _score(lm, group, cache)
    for group in labels.values():
        _classify(wb, group)
    ready: list[_Job] = []
    for group in groups.values():
        try:
            _condition(wb, group)
            ready += group
        except Exception:
            if len(group) == 1:
                _fail(group[0])
                continue
            for j in group:  # find which request is at fault: each alone
                try:
                    _condition(wb, [j])
                    ready.append(j)
                except Exception:
                    _fail(j)
    ready = _first_tokens(lm, ready)
    greedy: dict[tuple, list[_Job]] = {}
    for j in ready:
        if j.cfg.temperature > 0:
            _decode(lm, [j])
        else:
            greedy.setdefault(_cfg_key(j.cfg), []).append(j)
    for batch in greedy.values():
        try:
            _decode(lm, batch)
        except Exception:
            for j in batch:
                try:
                    _decode(lm, [j])
                except Exception:
                    _fail(j)
    for j in jobs:
        if j.result is not None:
            j.result.served = j.prompt.hash
    _count_prompt_positions(WhiteBox(lm, prefixes=cache, common_prefix=False), jobs)


def _count_prompt_positions(wb: WhiteBox, jobs: list[_Job]) -> None:
    """Each answered job's `prompt_positions` (`Applier.prompt_tokens`), per artifact together. `wb` keeps no
    common prefix, so a text prompt costs a tokenization, and a soft or prefix prompt's constant part is the cached
    one: no forward pass. A count that fails leaves 0 (the answer stands)."""
    groups: dict[tuple, list[_Job]] = {}
    for j in jobs:
        if j.result is not None:
            groups.setdefault((id(j.prompt), id(j.task)), []).append(j)
    for group in groups.values():
        j0 = group[0]
        try:
            counts = applier_for(j0.prompt).prompt_tokens(j0.prompt, wb, j0.task, [j.conversation for j in group])
        except Exception:  # noqa: BLE001 - metrics only
            continue
        for j, n in zip(group, counts):
            j.result.prompt_positions = n


_MEMBER_TASKS: dict[str, Any] = {}  # a member's own label task, one object per member (jobs group by its id)


def _served(wb: WhiteBox, jobs: list[_Job]) -> list[_Job]:
    """Each job as the job of the artifact that answers it (`Applier.served_by`: a selector's chosen member, which
    then batches with other requests of that member); with the member's own label words where they are not the
    route's. A job whose choice fails is failed; the others go on."""
    out = []
    for j in jobs:
        try:
            served = applier_for(j.prompt).served_by(j.prompt, wb, j.task, [j.conversation])[0]
        except Exception:
            _fail(j)
            continue
        if served is not j.prompt:
            own = served.label_task()
            if own is not None and (j.task is None or j.task.labels != own.labels):
                j.task = _MEMBER_TASKS.setdefault(served.hash, own)
            j.prompt = served
        out.append(j)
    return out


def _cfg_key(cfg: GenerationConfig) -> tuple:
    return (cfg.max_tokens, tuple(cfg.stop), cfg.temperature, cfg.top_p, cfg.seed, cfg.n)


def _condition(wb: WhiteBox, group: list[_Job]) -> None:
    j0 = group[0]
    cond = applier_for(j0.prompt).generation_condition(j0.prompt, wb, j0.task, [j.conversation for j in group])
    for i, j in enumerate(group):
        j.cond, j.row, j.cfg = cond, i, _merged_cfg(j.cfg, cond)


def _classify(wb: WhiteBox, group: list[_Job]) -> None:
    """Answer a classifier's requests of one artifact together (each alone if that fails, to find the faulty one)."""
    j0 = group[0]
    try:
        answers, _ = classify(applier_for(j0.prompt), j0.prompt, wb, j0.task, [j.conversation for j in group])
    except Exception:
        if len(group) == 1:
            _fail(j0)
        else:
            for j in group:
                _classify(wb, [j])
        return
    for j, a in zip(group, answers):
        text = j.task.labels[a.label]
        j.result = Answer(text, 0, len(wb.lm.encode(text)), "stop", label=a)
        j.batch = len(group)


def _decode(lm, batch: list[_Job]) -> None:
    prefix = merge_prefixes([j.cond.prefix for j in batch]) if len(batch) > 1 else batch[0].cond.prefix
    outs = decode(lm, prefix, [j.cond.rows[j.row] for j in batch], batch[0].cfg)
    for j, o in zip(batch, outs):
        j.result = _answer(lm, j.cond, j.row, o[0], j.cfg)
        j.result.first = j.first
        j.batch = len(batch)


@torch.no_grad()
def first_token_logprobs(lm, prefix: KV | None, rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """(B, vocab) log-probabilities of the first token generated after each row (the decoder's first step)."""
    ids, mask = pad_rows(rows, pad_id_of(lm), lm.device)
    hidden, _ = lm.forward(ids=ids, mask=mask, past=prefix)
    last = hidden[torch.arange(len(rows), device=lm.device), mask.sum(1) - 1]
    return F.log_softmax(lm.logits(last).float(), dim=-1).cpu()


def _first_tokens(lm, ready: list[_Job]) -> list[_Job]:
    """Fill `first` of the jobs that asked for log-probabilities (one pass per condition); return those still ok."""
    by_cond: dict[int, list[_Job]] = {}
    for j in ready:
        if j.top_logprobs is not None:
            by_cond.setdefault(id(j.cond), []).append(j)
    failed = set()
    for js in by_cond.values():
        try:
            lp = first_token_logprobs(lm, js[0].cond.prefix, [j.cond.rows[j.row] for j in js])
        except Exception:
            for j in js:
                _fail(j)
                failed.add(id(j))
            continue
        for j, row in zip(js, lp):
            top = row.topk(min(max(1, j.top_logprobs), row.shape[0]))
            j.first = list(zip(top.indices.tolist(), top.values.tolist()))
    return [j for j in ready if id(j) not in failed]


@torch.no_grad()
def score_answers(lm, prompt: Prompt, texts: Sequence[str], task=None, top: int = 0,
                  cache: PrefixCache | None = None) -> list[tuple[ScoredText, int]]:
    """Log-probabilities of the answer in each text (`Input: {input}\nOutput: {answer}`) under `prompt`.

    The prompt's applier conditions {input} with {answer} as an answer prefix, exactly as the
    engine renders a continued answer; the answer's tokens are those the engine scores as a
    label's words, so their log-probabilities sum to the engine's label score. The text before
    the answer comes back with log-probability None: the model does not read it there (the
    route's prompt renders the input into its own format). A text not of that form is all input.
    Returns, per text, the scored text and the number of tokens the model read. One forward pass.
    """
    parsed = [scoring_input(t) for t in texts]
    inputs = [x for x, _, _ in parsed for _ in range(2)]
    answers = [v for _, a, _ in parsed for v in (a, "")]  # each with its answer, then without: where it starts
    # every token stays in the rows (no common prefix cached): log-probabilities are read at each position
    backend = WhiteBox(lm, prefixes=cache, common_prefix=False)
    cond = applier_for(prompt).condition(prompt, backend, task, inputs, answers)
    fulls, cuts = cond.rows[0::2], []
    for full, bare in zip(fulls, cond.rows[1::2]):
        c = 0
        while c < min(len(full), len(bare)) and full[c] == bare[c]:
            c += 1
        cuts.append(max(1, c))  # a row's first token is read after the prefix; its log-probability is not asked
    ids, mask = pad_rows(fulls, pad_id_of(lm), lm.device)
    hidden, _ = lm.forward(ids=ids, mask=mask, past=cond.prefix)
    prefix_len = int(cond.prefix.real_lengths()[0]) if cond.prefix is not None else 0
    out = []
    for b, (text, (_, _, start), full, c) in enumerate(zip(texts, parsed, fulls, cuts)):
        scored_ids = full[c:]
        lps: list[float | None] = []
        tops: list[list[tuple[int, float]] | None] = []
        if scored_ids:
            lp = F.log_softmax(lm.logits(hidden[b, c - 1: len(full) - 1]).float(), dim=-1).cpu()
            lps = lp.gather(1, torch.tensor(scored_ids).unsqueeze(1)).squeeze(1).tolist()
            for row in lp:
                t = row.topk(min(top, row.shape[0])) if top > 0 else None
                tops.append(list(zip(t.indices.tolist(), t.values.tolist())) if t is not None else None)
        pieces = [lm.tokenizer.decode([i]) for i in scored_ids]
        joined = "".join(pieces)
        base = len(text) - len(joined) if scored_ids and text.endswith(joined) else start
        head = lm.encode(text[:base]) if base > 0 else []
        head_pieces = [lm.tokenizer.decode([i]) for i in head]
        offsets, pos = [], 0
        for t in head_pieces:
            offsets.append(min(pos, base))
            pos += len(t)
        pos = base
        for t in pieces:
            offsets.append(pos)
            pos += len(t)
        out.append((ScoredText(head + scored_ids, head_pieces + pieces, [None] * len(head) + lps, offsets,
                               [None] * len(head) + tops), prefix_len + len(full)))
    return out


def _score(lm, jobs: list[_Job], cache: PrefixCache | None) -> None:
    """Answer scoring jobs of one prompt together (each alone if that fails, to find the faulty one)."""
    try:
        j0 = jobs[0]
        results = score_answers(lm, j0.prompt, [j.conversation for j in jobs], j0.task, j0.top_logprobs or 0, cache)
    except Exception:
        if len(jobs) == 1:
            _fail(jobs[0])
        else:
            for j in jobs:
                _score(lm, [j], cache)
        return
    for j, (scored, n) in zip(jobs, results):
        j.result = Answer(j.conversation, n, 0, "length", scored=scored)
        j.batch = len(jobs)


def _alone(lm, j: _Job) -> None:
    try:
        text = generate_with_prompt(lm, j.prompt, [j.conversation], max_tokens=j.cfg.max_tokens,
                                    temperature=j.cfg.temperature, seed=j.cfg.seed, task=j.task)[0]
        n_out = len(lm.encode(text)) if text else 0
        j.result = Answer(text, 0, n_out, "stop")
    except Exception:
        _fail(j)


def _fail(j: _Job) -> None:
    import sys

    j.error = sys.exc_info()[1]


class LocalRunner:
    """Batches requests for one local model on one worker thread (see the module docstring)."""

    def __init__(self, lm, batch_window_ms: float = 5.0, max_batch: int = 16):
        self.lm = lm
        self.configure(batch_window_ms, max_batch)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="promptlift-local")
        self._queue: list[_Job] = []
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self.batches: list[int] = []  # sizes of the last batches run (for tests and the benchmark)
        self.prefixes = PrefixCache()

    def configure(self, batch_window_ms: float, max_batch: int) -> None:
        """Set how long a request waits for others, and how many run together."""
        self.window = max(0.0, batch_window_ms) / 1000.0
        self.max_batch = max(1, int(max_batch))

    async def generate(self, prompt: Prompt, conversation: Any, cfg: GenerationConfig, task=None, *,
                       top_logprobs: int | None = None, score: bool = False, classify: bool = False) -> Answer:
        """Answer one request (a string or chat messages) through `prompt`.

        top_logprobs: also give the first generated token's most likely tokens (one-stage prompts).
        score: `conversation` is a text to score (`score_answers`), nothing is generated.
        classify: answer with the label `eval` predicts (`task` is a classification task): its words,
          with every label's score in `Answer.label`.
        """
        loop = asyncio.get_running_loop()
        job = _Job(prompt, conversation, cfg, task, loop.create_future(), loop, top_logprobs=top_logprobs,
                   score=score, classify=classify)
        if self._wake is None:
            self._wake = asyncio.Event()
        self._queue.append(job)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run())
        self._wake.set()
        await asyncio.shield(job.future)
        if job.error is not None:
            raise job.error
        return job.result

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), 30.0)
                except asyncio.TimeoutError:
                    if not self._queue:
                        return  # idle: the next request starts a new worker
                continue
            if len(self._queue) < self.max_batch and self.window:
                await asyncio.sleep(self.window)
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            self.batches = (self.batches + [len(batch)])[-1000:]
            try:
                await loop.run_in_executor(self.executor, run_jobs, self.lm, batch, self.prefixes)
            except BaseException as e:  # every waiting request must be told, then shutdown goes on
                for j in batch:
                    j.error = j.error or (e if isinstance(e, Exception) else RuntimeError("the server is stopping"))
                if not isinstance(e, Exception):
                    self._release(batch)
                    raise
            self._release(batch)

    @staticmethod
    def _release(batch: list[_Job]) -> None:
        for j in batch:
            if not j.future.done():
                j.future.set_result(None)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


__all__ = ["LocalRunner", "Answer", "ScoredText", "PrefixCache", "check_local", "merge_prefixes", "run_jobs",
           "first_token_logprobs", "score_answers"]
