"""AutoPrompt: Shin et al. 2020, "AutoPrompt: Eliciting Knowledge from Language Models with Automatically
Generated Prompts" (EMNLP 2020).

Prompt tokens are improved one swap at a time. Each step takes a training
batch and one token position, computes the gradient of the batch's label loss
with respect to that position's input embedding, and ranks every allowed token
w by -grad · e_w (HotFlip, Ebrahimi et al. 2018: the first-order decrease of
the loss if w took that place). The top `candidates` swaps are each scored on
the same batch by the engine's scorer; the best is kept if it lowers the loss.

A swap is a discrete move, not an optimizer step on parameters, so AutoPrompt
is a search method on the shared ask/tell loop (`engine.search`): `propose`
makes the swap (its model calls counted as target calls, one per example
scored), the loop scores the kept prompt on dev, keeps the best prompt on dev,
budgets, checkpoints and resumes. The loss is the paper's over the label words
(classification) or minus the reference output's log-probability (generation),
as `engine.evaluate.example_losses` defines both.

The fixed instruction after the tokens is the task's or none, whichever start scores better on
dev (`instruction=auto`, `common.FixedInstruction`: both starts are the loop's step 0; ties: the
task's), as BBT's.

Defaults are sized for a CPU (20 steps, 8 candidates, batches of 8: about
2,200 examples scored with SmolLM2-135M on SST-2's 32/32 split).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...engine.apply import TokenApplier
from ...engine.evaluate import example_losses, label_candidates
from ...engine.search import Candidate, SearchSettings, SearchState, search
from ...lm.scoring import score_candidates
from ...engine.soft import header_kv
from ...registry import register
from ..base import Method
from ..shared import INSTRUCTION_HELP, FixedInstruction, TokenOptions, allowed_tokens, start_ids, token_prompt
from .common import token_gradient, vocab_embeddings


@dataclass
class AutoPromptConfig(TokenOptions):
    """AutoPrompt options: the tokens searched and the swap search."""

    instruction: str = field(default="auto", metadata={"help": INSTRUCTION_HELP})

    steps: int = field(default=20, metadata={"help": "swap steps (one position, one batch each)"})
    candidates: int = field(default=8, metadata={"help": "top HotFlip swaps scored per step"})
    batch_size: int = field(default=8, metadata={"help": "training examples per step (gradient and swap scores)"})
    dev_examples: int = field(default=0, metadata={
        "help": "dev examples the loop selects on: N drawn once with a fixed seed (0 = all)"})
    patience: int = field(default=0, metadata={"help": "stop after this many steps without a better prompt on dev"})

    def __post_init__(self):
        super().__post_init__()
        if self.steps < 0 or self.candidates < 1 or self.batch_size < 1:
            raise ValueError("steps must be >= 0, candidates and batch_size >= 1")
        if self.dev_examples < 0 or self.patience < 0:
            raise ValueError("dev_examples and patience must be >= 0")


class AutoPromptSearch(FixedInstruction):
    """One AutoPrompt run as the loop's method: what it knows of the model, built once per run."""

    def __init__(self, name: str, config: AutoPromptConfig, lm, task, seed: int):
        self.name, self.config, self.lm, self.task = name, config, lm, task
        c = config
        instruction = self.set_instructions(lm, task, c.instruction, c.demos, seed)
        self.layout = TokenApplier.layout(lm, labels_of_task(task), self.body, self.demos)
        self.allowed = allowed_tokens(lm, c.vocab)
        self.table = vocab_embeddings(lm)  # (V, hidden)
        self.start = start_ids(lm, task, c.init, c.tokens, random.Random(seed), instruction, self.allowed)
        self.cands = label_candidates(self.layout, task) if task.is_classification else None
        self._header = None

    # --- what the loop asks ----------------------------------------------------------------
    def search_settings(self) -> SearchSettings:
        c = self.config
        return SearchSettings(steps=c.steps, selection="full", dev_examples=c.dev_examples, patience=c.patience)

    def initial(self, state: SearchState):
        return self.starts(self.start)

    def update(self, state: SearchState, scored) -> None:
        """The kept swap becomes the current prompt (the loop keeps the best one on dev)."""
        self.keep_body(state, scored)
        if scored:
            state.data["found"] = scored[0].prompt.ids[: self.config.tokens]

    def on_body(self) -> None:
        self.layout = TokenApplier.layout(self.lm, labels_of_task(self.task), self.body, self.demos)

    def propose(self, state: SearchState) -> list[Candidate]:
        c = self.config
        self.use_body(state)
        found = list(state.data["found"])
        batch = state.rng.sample(state.train, min(c.batch_size, len(state.train)))
        pos = state.rng.randrange(len(found))
        grad, loss = state.target_call(lambda: self.gradient(found, batch), len(batch))  # (k, hidden), float
        gain = -(self.table @ grad[pos])  # (V,): first-order loss decrease of each token at `pos`
        gain[found[pos]] = -math.inf
        gain = gain.masked_fill(~self.allowed, -math.inf)
        best, best_loss = None, loss
        for w in gain.topk(min(c.candidates, int(self.allowed.sum()) - 1)).indices.tolist():
            swapped = found[:pos] + [w] + found[pos + 1:]
            cand = self.prompt(swapped)
            cand_loss = state.target_call(lambda: self.batch_loss(cand, batch), len(batch))
            if cand_loss < best_loss:
                best, best_loss = cand, cand_loss
        if best is None:
            state.skip("no-better-swap")
            return []
        return [Candidate(best, origin=f"swap@{pos}", parent=self.prompt(found).hash)]

    def estimate(self, state: SearchState) -> dict:
        c = self.config
        per_step = min(c.batch_size, len(state.train)) * (1 + c.candidates) + len(state.dev)
        return {"target_calls": len(state.dev) + self.extra_start_calls(state) + c.steps * per_step,
                "optimizer_calls": 0}

    # --- model calls -------------------------------------------------------------------------
    def prompt(self, found: list[int]):
        return token_prompt(self.lm, found, self.body, demos=self.demos)

    def labels_of(self, batch) -> torch.Tensor:
        return torch.tensor([self.task.label_names.index(ex.output) for ex in batch], device=self.lm.device)

    def gradient(self, found: list[int], batch) -> tuple[torch.Tensor, float]:
        """Gradient of the batch's label loss at each prompt token's embedding (k, hidden), and the loss."""
        if self._header is None:
            with torch.no_grad():
                self._header = header_kv(self.lm, self.layout)
        rows = [self.layout.example(ex.input) for ex in batch]

        def loss_of(prefix):
            if self.task.is_classification:
                scores = score_candidates(self.lm, prefix, rows, [self.cands] * len(batch))  # (B, labels)
                return F.cross_entropy(scores, self.labels_of(batch))
            # generation: minus the log-probability of each reference output (`example_losses`)
            targets = [[self.layout.answer(ex.output, close=True)] for ex in batch]
            return -score_candidates(self.lm, prefix, rows, targets)[:, 0].mean()

        return token_gradient(self.lm, self.layout, self._header, self.table, found, loss_of)

    def batch_loss(self, prompt, batch) -> float:
        """The batch's loss under `prompt` (`example_losses`: label cross-entropy or the reference's), by the engine."""
        return float(example_losses(self.lm, self.task, prompt, batch).mean())


def labels_of_task(task):
    """The label words a layout answers with (None for a generation task)."""
    return task.labels if task.is_classification else None


@register("autoprompt")
class AutoPrompt(Method):
    """Gradient-guided (HotFlip) token swaps, each scored on a training batch, the best kept (Shin et al. 2020)."""

    family = "hard"
    white_box = True
    Config = AutoPromptConfig
    smoke = {"steps": 2, "tokens": 2, "candidates": 2, "batch_size": 4}

    def fit(self, lm, task, ctx):
        return search(AutoPromptSearch(self.name, self.config, lm, task, ctx.seed), lm, task, ctx)
