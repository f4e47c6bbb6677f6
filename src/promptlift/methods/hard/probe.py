"""Probe: a short token prompt that makes a model emit a chosen string, after
"LLM Lies: Hallucinations are not Bugs, but Features as Adversarial Examples" (Yao et al. 2023)
and "Soft Prompting Might Be a Bug, Not a Feature" (2024).

What it is for: testing a model, or a prompt artifact, before it is served. If k
searched tokens (placed before the instruction, where a prompt's instruction goes)
make the model answer an input with an arbitrary target (a wrong label, a false
fact, a string the application must never produce), the instruction alone does
not keep the model on task, and anyone who controls part of the prompt can steer
it. The result says how far the target's log-probability rose and whether greedy
decoding now emits it; it is evidence about the model, not a prompt to ship.

The search is AutoPrompt's (Shin et al. 2020) with the target string's
log-likelihood as the objective: each step takes the gradient of the target's
negative log-likelihood (over the probe inputs) at one prompt position's input
embedding, ranks every allowed token by HotFlip (`common.hotflip`), scores the
top `candidates` swaps with the engine (a forward pass each, no gradient), and
proposes the best if it raises the likelihood. It is a search method on the
shared loop (`engine.search`), which owns the budget, checkpoint and resume.
The loop's selection score of a candidate is the target's per-token probability
(the geometric mean over its tokens, averaged over the probe inputs): `evaluate`
has no metric for "the likelihood of this string", so `propose` pays for it
(`state.target_call`, one target call per input scored or decoded) and hands it
to the loop through the loop's score cache; the loop keeps the best candidate.

Options: `target` ('' = the first training example's answer: its label words for
classification, its reference for generation, so it runs on any task), `input`
(one input; '' = the first `inputs` training inputs: a prompt that must work on
all of them), the tokens and fixed instruction (`TokenOptions`). The result is a
`TokenPrompt` whose meta records the target, its log-probability before and
after, and what greedy decoding emits before and after.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from ...artifacts import TokenPrompt
from ...engine.apply import TokenApplier, applier_for
from ...engine.backends import backend_for
from ...engine.evaluate import generate_with_prompt
from ...lm.scoring import score_candidates
from ...engine.search import Candidate, SearchSettings, SearchState, example_key, search
from ...engine.soft import header_kv
from ...errors import ConfigError
from ...registry import register
from ...task import Example, Task
from ..base import Method
from ..shared import TokenOptions, allowed_tokens, fixed_instruction, start_ids, token_prompt
from .common import hotflip, token_gradient, vocab_embeddings


@dataclass
class ProbeConfig(TokenOptions):
    """Probe options: the target and inputs, the tokens searched and the swap search."""

    target: str = field(default="", metadata={
        "help": "text the model should be made to emit; '' = the first training example's answer"})
    input: str = field(default="", metadata={
        "help": "the input the prompt is applied to; '' = the first `inputs` training inputs"})
    inputs: int = field(default=1, metadata={"help": "training inputs the target must follow (when input is '')"})
    steps: int = field(default=20, metadata={"help": "swap steps (one position each)"})
    candidates: int = field(default=16, metadata={"help": "top HotFlip swaps scored per step"})
    stop_on_emit: bool = field(default=True, metadata={
        "help": "end the search once greedy decoding emits the target on every input"})
    patience: int = field(default=0, metadata={"help": "stop after this many steps without a better prompt"})
    demos: int = field(default=0, metadata={"help": "unused: a probe keeps no demonstrations (0)"})

    def __post_init__(self):
        super().__post_init__()
        if self.steps < 0 or self.candidates < 1 or self.inputs < 1 or self.patience < 0:
            raise ValueError("steps and patience must be >= 0, candidates and inputs >= 1")
        if self.demos or self.instruction in ("auto", "demos"):
            raise ValueError("a probe has one fixed instruction and no demonstrations (instruction='', 'none' or a "
                             "text; demos=0)")


def default_target(task: Task) -> str:
    """The first training example's answer: its label's words, or its reference."""
    ex = task.split("train")[0]
    return task.labels[ex.output] if task.is_classification else ex.output


def emits(text: str, target: str) -> bool:
    """True if a generated answer starts with the target (surrounding whitespace ignored)."""
    return text.strip().startswith(target.strip())


class ProbeSearch:
    """One probe run as the loop's method: the model's tables, built once per run."""

    def __init__(self, name: str, config: ProbeConfig, lm, task: Task, seed: int):
        self.name, self.config, self.lm = name, config, lm
        c = config
        self.target = c.target or default_target(task)
        if not self.target.strip():
            raise ConfigError("probe: the target is empty")
        inputs = [c.input] if c.input else [ex.input for ex in task.split("train")[: c.inputs]]
        self.examples = [Example(x, self.target) for x in inputs]
        # the loop's task: the probe inputs, answered with the target (a generation layout: no label list)
        self.task = Task(name=f"{task.name}-probe", kind="generation", train=self.examples, dev=self.examples,
                         instruction=task.instruction, metric="contains")
        instruction = fixed_instruction(c.instruction, task)
        self.body = lm.encode(instruction) if instruction else []
        self.layout = TokenApplier.layout(lm, None, self.body)
        self.answer = self.layout.answer(self.target)  # the target's tokens after the answer opening
        self.allowed = allowed_tokens(lm, c.vocab)
        self.table = vocab_embeddings(lm)  # (V, hidden)
        self.start = start_ids(lm, task, c.init, c.tokens, random.Random(seed), instruction, self.allowed)
        self._header = None

    # --- what the loop asks ----------------------------------------------------------------
    def search_settings(self) -> SearchSettings:
        return SearchSettings(steps=self.config.steps, selection="full", patience=self.config.patience)

    def initial(self, state: SearchState):
        return [self.measured(state, self.start)]

    def propose(self, state: SearchState) -> list[Candidate]:
        c = self.config
        if "found" not in state.data:  # a budget stop before the start was measured: measure it now
            return [Candidate(self.measured(state, self.start), origin="initial")]
        found = list(state.data["found"])
        pos = state.rng.randrange(len(found))
        grad, logp = state.target_call(lambda: self.gradient(found), len(self.examples))  # (k, hidden), float
        best, best_logp = None, logp
        for w in hotflip(grad[pos], self.table, self.allowed, found[pos], c.candidates):
            swapped = found[:pos] + [w] + found[pos + 1:]
            lp = state.target_call(lambda: float(self.logprobs(self.prompt(swapped)).mean()), len(self.examples))
            if lp > best_logp:
                best, best_logp = swapped, lp
        if best is None:
            state.skip("no-better-swap")
            return []
        return [Candidate(self.measured(state, best), origin=f"swap@{pos}", parent=self.prompt(found).hash)]

    def update(self, state: SearchState, scored) -> None:
        """The kept swap becomes the current prompt; the search ends once it emits the target everywhere."""
        if not scored:
            return
        p = scored[0].prompt
        state.data["found"] = p.ids[: self.config.tokens]
        if self.config.stop_on_emit and p.meta.get("emits") == 1.0:
            state.finish("target emitted")

    def estimate(self, state: SearchState) -> dict:
        n = len(self.examples)
        return {"target_calls": 2 * n + self.config.steps * (n * (1 + self.config.candidates) + 2 * n),
                "optimizer_calls": 0}

    # --- model calls -------------------------------------------------------------------------
    def prompt(self, found: list[int]) -> TokenPrompt:
        return token_prompt(self.lm, found, self.body)

    def logprobs(self, prompt: TokenPrompt) -> torch.Tensor:
        """(N,) the target's total log-probability after each probe input, scored by the engine."""
        backend = backend_for(self.lm)
        inputs = [ex.input for ex in self.examples]
        cond = applier_for(prompt).condition(prompt, backend, self.task, inputs)
        return backend.label_scores(cond, [self.target])[:, 0].float().cpu()

    def measured(self, state: SearchState, found: list[int]) -> TokenPrompt:
        """The prompt of `found` with its target log-probability and greedy answers in `meta`; its
        per-input scores go to the loop's score cache (2 target calls per input: score, decode)."""
        bare = self.prompt(found)
        inputs = [ex.input for ex in self.examples]

        def run():
            lp = self.logprobs(bare)
            outs = generate_with_prompt(self.lm, bare, inputs, max_tokens=len(self.answer) + 4, task=self.task)
            return lp, outs

        lp, outs = state.target_call(run, 2 * len(inputs))
        hits = [emits(o, self.target) for o in outs]
        now = {"target_logprob": round(float(lp.mean()), 6), "emits": sum(hits) / len(hits), "greedy": outs}
        start = state.data.setdefault("start", now)  # the first prompt measured is the start
        p = token_prompt(self.lm, found, self.body, target=self.target, inputs=inputs, **now, start=start)
        n = max(1, len(self.answer))
        for ex, v, o in zip(self.examples, lp.tolist(), outs):  # per-token probability of the target
            state.scores.put(state.target.model_id, p.hash, example_key(ex), {"pred": o, "score": math.exp(v / n)})
        return p

    def gradient(self, found: list[int]) -> tuple[torch.Tensor, float]:
        """Gradient of the target's mean negative log-likelihood at each prompt token's embedding (k, hidden),
        and the mean log-likelihood."""
        if self._header is None:
            with torch.no_grad():
                self._header = header_kv(self.lm, self.layout)
        rows = [self.layout.example(ex.input) for ex in self.examples]

        def loss_of(prefix):  # the target string's mean negative log-likelihood
            return -score_candidates(self.lm, prefix, rows, [[self.answer]] * len(rows))[:, 0].mean()  # (N,) -> ()

        grad, loss = token_gradient(self.lm, self.layout, self._header, self.table, found, loss_of)
        return grad, -loss


@register("probe")
class Probe(Method):
    """A short token prompt that makes the model emit a target string: a robustness probe before serving."""

    family = "hard"
    white_box = True
    Config = ProbeConfig
    smoke = {"steps": 2, "tokens": 2, "candidates": 2}

    def fit(self, lm, task, ctx):
        run = ProbeSearch(self.name, self.config, lm, task, ctx.seed)
        best = search(run, lm, run.task, ctx)
        if not isinstance(best, TokenPrompt):  # the budget did not pay for measuring the start
            best = token_prompt(lm, run.start, run.body, target=run.target, **best.meta)
        start = best.meta.pop("start", {})
        best.meta.update({
            "target_logprob_before": start.get("target_logprob"),
            "target_logprob_after": best.meta.get("target_logprob"),
            "emits_before": start.get("emits"), "emits_after": best.meta.get("emits"),
            "greedy_before": start.get("greedy"), "greedy_after": best.meta.get("greedy"),
        })
        return best
