"""Soft-to-hard projection: discretise a trained soft prompt into its nearest vocabulary tokens.

The projection step of PEZ (Wen et al. 2023, "Hard Prompts Made Easy", NeurIPS
2023) applied once, after training, to a prompt from prompt tuning (Lester et
al. 2021) or p-tuning; Khashabi et al. 2022 ("Prompt Waywardness: The Curious
Case of Discretized Interpretation of Continuous Prompts", NAACL 2022) show how
far the nearest tokens can be from what the vectors do, so the dev accuracy is
measured before and after (`meta["dev_before"]`, `meta["dev_after"]`).

Each vector becomes its nearest allowed token (cosine or L2). With
`fluency > 0` the tokens are chosen left to right among each vector's
`fluency_candidates` nearest, by similarity + fluency × log p(token | the
tokens before it) under the model itself, which trades closeness for text the
model finds likely. The source is a soft prompt artifact or run directory
(`source=PATH`); without one, prompt tuning is trained first with this
method's training options, through the shared trainer (which checkpoints and
resumes it).

The projected tokens keep the soft prompt's instruction after them, or not, whichever scores
better on dev (`keep_instruction=auto`; ties: kept). Measured on SST-2 with SmolLM2-135M
(prompt tuning from the instruction's text, 20 vectors, 3 seeds): every vector's nearest token is
still the token it started from (cosine 0.60-0.78 to it), so the projection gives back the
instruction's own tokens and scores 50.0 % on dev with or without the instruction, against
72-78 % for the soft prompt: the waywardness Khashabi et al. describe. So
without a source, prompt tuning starts here from random vocabulary tokens
(`init=random`): on the same dev set (seed 0) its soft prompt scored 75.0 % and
its projection, kept with the instruction, 65.6 %, against 50.0 % from a text
start; that is how the default was chosen (dev only).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from ...artifacts import SoftPrompt, load
from ...engine.apply import TokenApplier
from ...engine.evaluate import evaluate
from ...engine.search import best_of
from ...engine.soft import check_tensor_prompt
from ...errors import BudgetExceeded, ConfigError
from ...lm.budget import ledger_of
from ...registry import get_method, register
from ..base import Method
from ..shared import VOCABS, SoftConfig, allowed_tokens, token_prompt
from .common import METRICS, similarity, vocab_embeddings


@dataclass
class ProjectConfig(SoftConfig):
    """Projection options, then prompt tuning's (used only when there is no `source`)."""

    source: str = field(default="", metadata={
        "help": "soft prompt to project: a prompt.json or run directory ('' = train prompt-tuning first)"})
    init: str = field(default="random", metadata={
        "help": "prompt tuning's start (no source): random (vocabulary; its projection is not the instruction "
                "again) | text (instruction tokens) | labels"})
    metric: str = field(default="cosine", metadata={"help": "nearest token by: cosine | l2"})
    fluency: float = field(default=0.0, metadata={
        "help": "weight of the model's log-probability of each token given the ones before it (0 = nearest only)"})
    fluency_candidates: int = field(default=10, metadata={"help": "nearest tokens per vector the fluency term ranks"})
    vocab: str = field(default="readable", metadata={
        "help": "tokens allowed: readable (printable ASCII, not special) | all (any non-special token)"})
    keep_instruction: str = field(default="auto", metadata={
        "help": "the soft prompt's instruction after the projected tokens: yes | no | auto (whichever scores "
                "better on dev; ties: yes)"})

    def __post_init__(self):
        super().__post_init__()
        if self.keep_instruction not in ("yes", "no", "auto"):
            raise ValueError(f"keep_instruction must be yes, no or auto, got {self.keep_instruction!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.vocab not in VOCABS:
            raise ValueError(f"vocab must be one of {', '.join(VOCABS)}, got {self.vocab!r}")
        if self.fluency < 0 or self.fluency_candidates < 1:
            raise ValueError("fluency must be >= 0 and fluency_candidates >= 1")


def fluent_tokens(lm, head: list[int], sim: torch.Tensor, fixed: dict[int, list[int]], weight: float,
                  n_cands: int) -> list[int]:
    """Tokens chosen left to right: argmax of similarity + weight * log p(token | head and the tokens before).

    sim: (k, V) similarity of each vector to each token (disallowed = -inf).
    head: the tokens before the first vector (the chat header).
    fixed: tokens that sit right before vector i (the instruction, for a split soft prompt), by i.
    """
    out: list[int] = []
    kv = None
    todo = list(head)
    with torch.no_grad():
        for i in range(sim.shape[0]):
            todo += fixed.get(i, [])
            logp = torch.zeros(sim.shape[1], device=lm.device)  # no context yet: similarity alone
            if todo:
                hidden, kv = lm.forward(ids=torch.tensor([todo], device=lm.device), past=kv)
                logp = F.log_softmax(lm.logits(hidden[0, -1]), dim=-1)  # (V,)
            top = sim[i].to(lm.device).topk(min(n_cands, sim.shape[1]))
            score = top.values + weight * logp[top.indices]
            tok = int(top.indices[int(score.argmax())])
            out.append(tok)
            todo = [tok]
    return out


@register("project")
class Project(Method):
    """A trained soft prompt discretised into its nearest tokens; dev accuracy before and after."""

    family = "hard"
    white_box = True
    Config = ProjectConfig
    smoke = {"epochs": 1, "tokens": 2, "batch_size": 8, "fluency": 1.0, "fluency_candidates": 3}

    def source(self, lm, task, ctx) -> SoftPrompt:
        c = self.config
        if not c.source:
            soft_opts = {f.name: getattr(c, f.name) for f in fields(SoftConfig)}
            return get_method("prompt-tuning")(**soft_opts).fit(lm, task, ctx)  # by name: no family imports another
        p = load(c.source)
        if not isinstance(p, SoftPrompt):
            raise ConfigError(f"{c.source}: project needs a soft prompt (prompt-tuning, p-tuning), "
                              f"not a {p.type!r} one")
        check_tensor_prompt(p, lm)
        return p

    def fit(self, lm, task, ctx):
        c = self.config
        soft = self.source(lm, task, ctx)
        body = lm.encode(soft.instruction) if soft.instruction else []
        k = soft.embeds.shape[0]
        s = k if soft.split < 0 else min(soft.split, k)
        allowed = allowed_tokens(lm, c.vocab)
        sim = similarity(soft.embeds.to(lm.device), vocab_embeddings(lm), c.metric)  # (k, V)
        sim = sim.masked_fill(~allowed, float("-inf"))
        found = sim.argmax(-1).tolist()
        how = "nearest"
        if c.fluency > 0 and not ledger_of(lm).exhausted():
            try:
                head = TokenApplier.layout(lm, task.labels if task.is_classification else None).header
                found = fluent_tokens(lm, head, sim, {s: body}, c.fluency, c.fluency_candidates)
                how = "fluency"
            except BudgetExceeded as e:
                ctx.note(f"{e}; keeping the nearest tokens (no fluency term)")
        # a split soft prompt had its instruction between the first s vectors and the rest; its demonstrations
        # (if any) follow as the token prompt's (for a split one the last vectors' tokens move before them)
        keep = [body] if c.keep_instruction == "yes" or not body else [[]] if c.keep_instruction == "no" else [body, []]
        prompts = [token_prompt(lm, found[:s], b + found[s:], demos=soft.demos) for b in keep]
        prompt, dev = self.dev_before_after(lm, task, soft, prompts, ctx)
        prompt.meta = {**prompt.meta, "tokens": k, "projection": how, "source": c.source or "prompt-tuning",
                       "source_position": soft.position, "instruction_kept": bool(body) and prompt is prompts[0], **dev}
        ctx.record(event="project", **{m: prompt.meta[m] for m in ("dev_before", "dev_after", "projection",
                                                                   "instruction_kept")})
        return prompt

    def dev_before_after(self, lm, task, soft: SoftPrompt, prompts: list, ctx) -> tuple:
        """The best of `prompts` on dev (the search loop's rule, `engine.search.best_of`), and the dev accuracy
        of the soft prompt and of it.

        Accuracies are None where there is no dev set or the budget ran out (then the first prompt is kept,
        or the best scored before it ran out).
        """
        out = {"dev_before": soft.meta.get("best_dev"), "dev_after": None}
        if not task.dev or ledger_of(lm).exhausted():
            return prompts[0], out
        try:
            out["dev_before"] = evaluate(lm, task, soft, split="dev", progress=False, reporter=ctx.reporter).accuracy
        except BudgetExceeded as e:
            ctx.note(f"{e}; dev accuracy before/after projection not measured")
            return prompts[0], out
        choice = best_of(prompts, lm, task, ctx, name="project")
        if choice.stopped:
            ctx.note("budget exhausted choosing the projected prompt; keeping the best scored so far")
        out["dev_after"] = choice.scores[choice.index]
        return prompts[choice.index], out
