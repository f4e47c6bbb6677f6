"""Where a rendered prompt is run: a local white-box model, or an OpenAI-compatible endpoint.

Appliers (`engine.apply`) turn an artifact and inputs into a *condition* for a
backend; a backend offers the same three verbs on its conditions:

- `label_scores(cond, words) -> (N, L)`: total log-probability of each label's words;
- `generate(cond, cfg) -> N strings`;
- `can_score_labels`: whether `label_scores` is available (always on a local
  model; on an endpoint when it returns log-probabilities).

`WhiteBox` runs the model in-process: the longest token prefix shared by every
row is encoded once and its key/value cache reused, rows run in length-sorted
batches, and logits are computed only where something is scored. `Endpoint`
sends messages (chat API) or plain text (completions API) to the server.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

import torch

from ..errors import UnsupportedError
from ..kv import KV
from ..lm.base import GenerationConfig
from ..render import Rendered
from ..reporter import Quiet, Reporter
from ..template import answer_sep, to_ids
from ..lm.decode import decode
from ..lm.scoring import score_candidates


@dataclass
class Cond:
    """A white-box condition: a shared cached prefix and each example's tokens after it.

    prefix: key/value cache of the shared part (batch 1), or None.
    rows: per-example token ids after the prefix (each at least one token).
    sep: text between the prompt and an answer (" " after "Output:" or an answer prefix).
    stop: stop strings for generation.
    """

    prefix: KV | None
    rows: list[list[int]]
    sep: str = ""
    stop: list[str] = field(default_factory=list)
    prefix_ids: list[int] | None = None  # the prefix's token ids, when it is made of tokens only
    # rows read different prefixes: `prefix` holds P of them (batch P) and row i reads prefix_rows[i]
    # (a mixture scores its K members' prefixes in one pass); None: every row reads the batch-1 `prefix`
    prefix_rows: list[int] | None = None

    def prefix_of(self, rows: Sequence[int]) -> KV | None:
        """The cache that rows `rows` (indices into `self.rows`) read, batched as they are."""
        if self.prefix is None or self.prefix_rows is None:
            return self.prefix
        return self.prefix.select(torch.tensor([self.prefix_rows[i] for i in rows], device=self.prefix.mask.device))


def _common_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    if not rows:
        return 0
    first, n = rows[0], min(len(r) for r in rows)
    for r in rows[1:]:
        i = 0
        while i < n and r[i] == first[i]:
            i += 1
        n = i
    return n


class PrefixCache:
    """Key/value caches of artifacts' constant parts, one per (artifact, key); least recently used go.

    A soft, prefix or token prompt's constant part ([header][its vectors or ids][instruction]) is the
    same for every input, and computing it is most of the prompt's cost: a backend given a
    `PrefixCache` computes it once per artifact and keeps it (the proxy does, across requests).
    """

    def __init__(self, max_entries: int = 256):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, tuple[weakref.ref, KV | None]] = OrderedDict()

    def get(self, prompt, key: Hashable, make: Callable[[], KV | None]) -> KV | None:
        k = (id(prompt), key)
        hit = self._entries.get(k)
        if hit is not None and hit[0]() is prompt:  # same object, not a new one at a reused address
            self._entries.move_to_end(k)
            return hit[1]
        kv = make()
        self._entries[k] = (weakref.ref(prompt), kv)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return kv

    def __len__(self) -> int:
        return len(self._entries)


class WhiteBox:
    """A local `HFModel` run through promptlift's own scorer and decoding loop.

    prefixes: keep artifacts' constant prefixes across calls (`constant_prefix`); None computes them per call.
    common_prefix: cache the longest token prefix shared by a text condition's rows (False keeps every
      token in the rows: a caller that reads log-probabilities at every position of a row needs them).
    """

    white_box = True
    can_score_labels = True
    positions_unit = "tokens"  # what `positions` counts: the model's own positions

    def __init__(self, lm, batch_size: int = 16, reporter: Reporter | None = None, *,
                 prefixes: PrefixCache | None = None, common_prefix: bool = True):
        self.lm = lm
        self.batch_size = max(1, int(batch_size))
        self.reporter = reporter or Quiet()  # progress bars of long scoring and decoding passes
        self.prefixes = prefixes
        self.common_prefix = common_prefix
        self._embedded: dict[tuple, torch.Tensor] = {}

    def constant_prefix(self, prompt, key: Hashable, make: Callable[[], KV | None]) -> KV | None:
        """The cache of `prompt`'s constant part under `key` (what else it depends on): `make()`, or the one
        kept from an earlier call when this backend keeps `prefixes`."""
        return make() if self.prefixes is None else self.prefixes.get(prompt, key, make)

    @torch.no_grad()
    def condition_text(self, rendered: Sequence[Rendered]) -> Cond:
        """Token rows of the full rendered texts; their longest common prefix is cached once."""
        full = [to_ids(self.lm, r) for r in rendered]
        n = _common_prefix_len(full) if self.common_prefix else 0
        n = min(n, min((len(f) for f in full), default=1) - 1)  # every row keeps at least one token
        prefix = None
        if n > 0:
            _, prefix = self.lm.forward(ids=torch.tensor([full[0][:n]], device=self.lm.device))
        stop = [] if self.lm.has_chat_template else ["\n"]
        sep = answer_sep(self.lm, rendered[0]) if rendered else ""
        return Cond(prefix, [f[n:] for f in full], sep, stop, full[0][:n] if full else [])

    def positions(self, cond: Cond) -> list[int]:
        """Each row's positions in the forward pass: its cached prefix's (soft vectors, learned keys/values and
        tokens alike) and its own tokens."""
        if cond.prefix is None:
            return [len(r) for r in cond.rows]
        lengths = cond.prefix.real_lengths().tolist()
        return [int(lengths[cond.prefix_rows[i] if cond.prefix_rows is not None else 0]) + len(r)
                for i, r in enumerate(cond.rows)]

    def text_positions(self, rendered: Sequence[Rendered]) -> list[int]:
        """Each rendered text's token count (no forward pass)."""
        return [len(to_ids(self.lm, r)) for r in rendered]

    def _order(self, rows):
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))  # longest first: peak memory up front
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    @torch.no_grad()
    def label_scores(self, cond: Cond, words: Sequence[str]) -> torch.Tensor:
        """(N, L) total log-probabilities of each label's words after each row."""
        cands = [self.lm.encode(cond.sep + w) for w in words]
        out = torch.empty(len(cond.rows), len(cands))
        bar = self.reporter.progress(len(cond.rows), "eval", unit="ex")
        for idx in self._order(cond.rows):
            s = score_candidates(self.lm, cond.prefix_of(idx), [cond.rows[i] for i in idx], [cands] * len(idx))
            out[torch.tensor(idx)] = s.float().cpu()
            bar.update(len(idx))
        bar.close()
        return out

    @torch.no_grad()
    def answer_scores(self, cond: Cond, answers: Sequence[str]) -> torch.Tensor:
        """(N,) total log-probability of each row's own answer, closed by the end-of-answer tokens.

        The reference a generation task is trained and searched towards: the same tokens the
        shared trainer's "lm" loss reads (`Layout.answer(..., close=True)`).
        """
        from ..template import build_layout

        close = build_layout(self.lm, "").end_of_answer
        targets = [self.lm.encode(cond.sep + a) + close for a in answers]
        out = torch.empty(len(cond.rows))
        for idx in self._order(cond.rows):
            s = score_candidates(self.lm, cond.prefix_of(idx), [cond.rows[i] for i in idx], [[targets[i]] for i in idx])
            out[torch.tensor(idx)] = s[:, 0].float().cpu()
        return out

    @torch.no_grad()
    def generate(self, cond: Cond, cfg: GenerationConfig) -> list[str]:
        """One completion per row (the first of `cfg.n`)."""
        cfg = GenerationConfig(n=cfg.n, temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                               stop=list(dict.fromkeys([*cfg.stop, *cond.stop])), top_p=cfg.top_p, seed=cfg.seed)
        out = [""] * len(cond.rows)
        bar = self.reporter.progress(len(cond.rows), "generate", unit="ex")
        for idx in self._order(cond.rows):
            for i, o in zip(idx, decode(self.lm, cond.prefix_of(idx), [cond.rows[i] for i in idx], cfg)):
                out[i] = o[0]
            bar.update(len(idx))
        bar.close()
        return out

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, hidden) L2-normalised embeddings by the model itself (for nearest-neighbour demos).

        Kept for the backend's life: a demonstration pool is embedded once, not once per chunk.
        """
        from .neighbors import embed_texts

        key = tuple(texts)
        if key not in self._embedded:
            self._embedded[key] = embed_texts(self.lm, texts)
        return self._embedded[key]


CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text under BPE tokenizers


@dataclass
class EndpointCond:
    """An endpoint condition: the rendered prompts themselves."""

    rendered: list[Rendered]
    sep: str
    stop: list[str]


class Endpoint:
    """An OpenAI-compatible endpoint (`OpenAIModel`), chat or completions API.

    Chat API: messages go to /chat/completions; labels are ranked by the
    log-probability of their first token among the answer's `top_logprobs`
    (probed once per endpoint). Completions API: the plain-text rendering goes to
    /completions; labels are scored in full with `echo` + `logprobs`, exactly as
    the local engine scores them. Without log-probabilities, classification
    falls back to generation matched to the label words (see `evaluate`).
    """

    white_box = False
    # no tokenizer on this side of an endpoint: a rendered prompt's length is estimated from its characters
    positions_unit = f"estimated tokens (characters / {CHARS_PER_TOKEN})"

    def __init__(self, lm, batch_size: int = 16, reporter: Reporter | None = None):
        self.lm = lm
        self.reporter = reporter or Quiet()

    def text_positions(self, rendered: Sequence[Rendered]) -> list[float]:
        """Each rendered prompt's estimated token count: its characters (messages' contents, or the plain text
        the completions API sends) / CHARS_PER_TOKEN."""
        texts = ["".join(m["content"] for m in r.messages()) if self.chat else r.plain_text() for r in rendered]
        return [len(t) / CHARS_PER_TOKEN for t in texts]

    def positions(self, cond: EndpointCond) -> list[float]:
        return self.text_positions(cond.rendered)

    @property
    def chat(self) -> bool:
        return getattr(self.lm, "api", "chat") == "chat"

    @property
    def can_score_labels(self) -> bool:
        return bool(self.lm.capabilities().get("logprobs"))

    def condition_text(self, rendered: Sequence[Rendered]) -> EndpointCond:
        rendered = list(rendered)
        cont = bool(rendered and rendered[0].continues_answer)
        return EndpointCond(rendered, " " if (cont or not self.chat) else "", [] if self.chat else ["\n"])

    def _prompts(self, cond: EndpointCond) -> list:
        return [r.messages() if self.chat else r.plain_text() for r in cond.rendered]

    def label_scores(self, cond: EndpointCond, words: Sequence[str]) -> torch.Tensor:
        """(N, L) label log-probabilities from the endpoint (see the class docstring)."""
        if not self.can_score_labels:
            raise UnsupportedError(f"{self.lm.model_id}: the endpoint returns no log-probabilities")
        targets = [cond.sep + w for w in words]
        prompts = self._prompts(cond)
        if not self.chat:
            rows = self.lm.score_many(prompts, targets)
            return torch.tensor(rows, dtype=torch.float32)
        tops = self.lm.first_token_logprobs(prompts, getattr(self.lm, "top_logprobs", 20))
        return torch.tensor([first_token_scores(top, targets, self.lm.model_id) for top in tops])

    def answer_scores(self, cond: EndpointCond, answers: Sequence[str]) -> torch.Tensor:
        """(N,) total log-probability of each row's own answer (then a newline, where generation stops).

        Completions API only (`echo` + `logprobs` score a given continuation); a chat endpoint
        cannot score text it did not write.
        """
        if self.chat or not self.can_score_labels:
            raise UnsupportedError(f"{self.lm.model_id}: scoring a reference answer needs the completions API "
                                   "with log-probabilities (--api completions)")
        prompts = self._prompts(cond)
        rows = self.lm.score_pairs(prompts, [cond.sep + a + "\n" for a in answers])
        return torch.tensor(rows, dtype=torch.float32)

    def generate(self, cond: EndpointCond, cfg: GenerationConfig) -> list[str]:
        cfg = GenerationConfig(n=cfg.n, temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                               stop=list(dict.fromkeys([*cfg.stop, *cond.stop])), top_p=cfg.top_p, seed=cfg.seed,
                               choices=list(cfg.choices))
        outs = self.lm.generate(self._prompts(cond), cfg)
        return [(o[0] if o else "").strip() for o in outs]

    def embed_texts(self, texts):
        raise UnsupportedError(f"{self.lm.model_id}: an endpoint cannot embed inputs with the model itself")


def first_token_scores(top: dict[str, float], targets: Sequence[str], where: str = "") -> list[float]:
    """Each target's score from the answer's first-token `top_logprobs` ({token text: log-prob}).

    A target scores the log-probability of the longest listed token it starts with;
    a target that starts with none of them scores below every listed token (its
    true log-probability is at most the smallest one listed). Two targets that
    only match the same token cannot be told apart: that is an error.
    """
    floor = (min(top.values()) if top else 0.0) - 1.0
    out, owner = [], {}
    for t in targets:
        best = max((tok for tok in top if tok and t.startswith(tok)), key=len, default=None)
        if best is None:
            stripped = [tok for tok in top if tok.strip() and t.strip().startswith(tok.strip())]
            best = max(stripped, key=len, default=None)
        if best is not None:
            partial = best.strip() != t.strip()
            if best in owner and (partial or owner[best][1]):
                raise UnsupportedError(
                    f"{where}: labels {owner[best][0]!r} and {t.strip()!r} both begin with the token {best!r}, and a "
                    "chat endpoint's top_logprobs score only the first token; use label words with distinct first "
                    "words, or the completions API (api=completions) that scores whole label words")
            owner[best] = (t.strip(), partial)
        out.append(top[best] if best is not None else floor)
    return out


def backend_for(lm, batch_size: int = 16, reporter: Reporter | None = None):
    """The backend that runs prompts on `lm`."""
    cls = WhiteBox if getattr(lm, "is_white_box", False) else Endpoint
    return cls(lm, batch_size, reporter)
