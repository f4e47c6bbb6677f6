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

The constant prefix of a soft or prefix prompt is computed once per artifact
and kept (`PrefixCache`). Sampled requests (temperature > 0) decode alone, so
their seed gives the same answer as alone; prompts answered in two stages
(`Reasoning`) run through `generate_with_prompt` one request at a time.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import torch

from ..artifacts import Prompt
from ..engine.apply import applier_for
from ..engine.backends import Cond, WhiteBox
from ..engine.decode import decode
from ..engine.evaluate import check_model, generate_with_prompt
from ..kv import KV
from ..lm.base import GenerationConfig


@dataclass
class Answer:
    """One generated answer and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish: str  # "stop" or "length"


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


class _MultiStage(Exception):
    pass


class _CondRecorder:
    """WhiteBox in every respect but `generate`: it keeps the condition instead of decoding it."""

    def __init__(self, wb: WhiteBox):
        self._wb = wb
        self.recorded: tuple[Cond, GenerationConfig] | None = None

    def __getattr__(self, name):
        return getattr(self._wb, name)

    def generate(self, cond: Cond, cfg: GenerationConfig) -> list[str]:
        if self.recorded is not None:
            raise _MultiStage()
        self.recorded = (cond, cfg)
        return [""] * len(cond.rows)


def check_local(prompt: Prompt, lm, task=None) -> None:
    """Refuse, at start-up, an artifact this local model cannot apply (made for another model, ...)."""
    check_model(prompt, lm)
    applier_for(prompt).check(prompt, WhiteBox(lm), task)


def merge_prefixes(prefixes: Sequence[KV | None]) -> KV | None:
    """One batch cache from per-row batch-1 caches of different lengths (right-padded, masked out).

    The decoder gives every row positions from its own real length, so a padded
    row reads exactly what it reads alone.
    """
    real = [p for p in prefixes if p is not None and p.seq_len > 0]
    if not real:
        return None
    ref = real[0]
    L = max(p.seq_len for p in real)
    n_layers = ref.num_layers
    keys: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    values: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    masks = []
    for p in prefixes:
        n = p.seq_len if p is not None else 0
        for i in range(n_layers):
            k0, v0 = ref.keys[i], ref.values[i]
            if n:
                k, v = p.keys[i], p.values[i]
            else:
                k, v = k0[:, :, :0], v0[:, :, :0]
            if n < L:
                k = torch.cat([k, k0.new_zeros(1, k0.shape[1], L - n, k0.shape[3])], dim=2)
                v = torch.cat([v, v0.new_zeros(1, v0.shape[1], L - n, v0.shape[3])], dim=2)
            keys[i].append(k)
            values[i].append(v)
        m = torch.zeros(1, L, dtype=torch.long, device=ref.mask.device)
        if n:
            m[:, :n] = p.mask.to(m.device)
        masks.append(m)
    return KV([torch.cat(k, 0) for k in keys], [torch.cat(v, 0) for v in values], torch.cat(masks, 0))


def _answer(lm, cond: Cond, row: int, text: str, cfg: GenerationConfig) -> Answer:
    prefix_len = int(cond.prefix.real_lengths()[0]) if cond.prefix is not None else 0
    n_out = len(lm.encode(text)) if text else 0
    return Answer(text, prefix_len + len(cond.rows[row]), n_out, "length" if n_out >= cfg.max_tokens else "stop")


def _merged_cfg(cfg: GenerationConfig, cond: Cond) -> GenerationConfig:
    return replace(cfg, stop=list(dict.fromkeys([*cfg.stop, *cond.stop])))


class PrefixCache:
    """Key/value caches of soft and prefix prompts' constant part, one per artifact (least recently used go).

    An artifact's prefix ([header][soft vectors][instruction]) is the same for
    every request, and computing it is most of the prompt's cost.
    """

    def __init__(self, max_entries: int = 256):
        self.max_entries = max_entries
        self._entries: OrderedDict[int, tuple[weakref.ref, KV]] = OrderedDict()

    def get(self, prompt: Prompt, make: Callable[[], KV]) -> KV:
        key = id(prompt)
        hit = self._entries.get(key)
        if hit is not None and hit[0]() is prompt:  # same object, not a new one at a reused address
            self._entries.move_to_end(key)
            return hit[1]
        kv = make()
        self._entries[key] = (weakref.ref(prompt), kv)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return kv

    def __len__(self) -> int:
        return len(self._entries)


class _CachingPrefix:
    """Mixin for an applier with a `prefix` method (soft and prefix prompts): prefixes come from a PrefixCache."""

    cache: PrefixCache

    def prefix(self, prompt, lm, layout):
        return self.cache.get(prompt, lambda: super(_CachingPrefix, self).prefix(prompt, lm, layout))


_CACHING: dict[type, type] = {}


def applier_with_cache(prompt: Prompt, cache: PrefixCache | None):
    """The prompt's applier; for soft/prefix prompts one whose constant prefix is computed once per artifact.

    (The core could take a prefix cache itself; see the serve report.)
    """
    ap = applier_for(prompt)
    if cache is None or not callable(getattr(ap, "prefix", None)):
        return ap
    cls = _CACHING.get(type(ap))
    if cls is None:
        cls = _CACHING[type(ap)] = type(f"Caching{type(ap).__name__}", (_CachingPrefix, type(ap)), {})
    cached = cls()
    cached.cache = cache
    return cached


def run_jobs(lm, jobs: list[_Job], cache: PrefixCache | None = None) -> None:
    """Answer `jobs` (on the model's thread); each gets `result` or `error`."""
    wb = WhiteBox(lm)
    groups: dict[tuple, list[_Job]] = {}
    for j in jobs:
        groups.setdefault((id(j.prompt), id(j.task), _cfg_key(j.cfg)), []).append(j)
    ready: list[_Job] = []
    for group in groups.values():
        try:
            _condition(wb, group, cache)
            ready += group
        except _MultiStage:
            for j in group:
                _alone(lm, j)
        except Exception:
            if len(group) == 1:
                _fail(group[0])
                continue
            for j in group:  # find which request is at fault: each alone
                try:
                    _condition(wb, [j], cache)
                    ready.append(j)
                except _MultiStage:
                    _alone(lm, j)
                except Exception:
                    _fail(j)
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


def _cfg_key(cfg: GenerationConfig) -> tuple:
    return (cfg.max_tokens, tuple(cfg.stop), cfg.temperature, cfg.top_p, cfg.seed, cfg.n)


def _condition(wb: WhiteBox, group: list[_Job], cache: PrefixCache | None = None) -> None:
    j0 = group[0]
    rec = _CondRecorder(wb)
    applier_with_cache(j0.prompt, cache).generate(j0.prompt, rec, j0.task, [j.conversation for j in group], j0.cfg)
    cond, cfg = rec.recorded
    for i, j in enumerate(group):
        j.cond, j.row, j.cfg = cond, i, _merged_cfg(cfg, cond)


def _decode(lm, batch: list[_Job]) -> None:
    prefix = merge_prefixes([j.cond.prefix for j in batch]) if len(batch) > 1 else batch[0].cond.prefix
    outs = decode(lm, prefix, [j.cond.rows[j.row] for j in batch], batch[0].cfg)
    for j, o in zip(batch, outs):
        j.result = _answer(lm, j.cond, j.row, o[0], j.cfg)
        j.batch = len(batch)


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

    async def generate(self, prompt: Prompt, conversation: Any, cfg: GenerationConfig, task=None) -> Answer:
        """Answer one request (a string or chat messages) through `prompt`."""
        loop = asyncio.get_running_loop()
        job = _Job(prompt, conversation, cfg, task, loop.create_future(), loop)
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


__all__ = ["LocalRunner", "Answer", "check_local", "merge_prefixes", "run_jobs"]
