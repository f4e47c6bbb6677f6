"""BDPL: Diao et al. 2023, "Black-Box Prompt Learning for Pre-trained Language Models" (TMLR 2023).

Each of the k prompt positions has its own categorical distribution p_i over a
vocabulary subset of P tokens. The paper pre-selects that subset from the
training data (PMI n-grams); here it is the `pool` allowed tokens that occur
most often in the training inputs, the instruction and the label words
(`shared.train_vocab`: frequent words of the task, readable by default).

Each step samples I prompts s_1..s_I (one token per position from p_i),
scores each on the same training batch through the engine (label
cross-entropy L(s_k); for a generation task minus the reference output's
log-probability, `engine.evaluate.example_losses`; from scores only: the model
is never differentiated) and
moves p with the variance-reduced policy-gradient estimator of the paper:

    g_i = 1/I · Σ_k (L(s_k) − b_k) · ∇_{p_i} log P(s_k),   b_k = mean of the other samples' losses

with ∇_{p_i} log P(s_k) = e_j / p_{i,j} for the token j that s_k put at position i. As
the paper, p is parametrised by the probabilities themselves: p_i ← Π(p_i − lr · g_i),
Π the Euclidean projection onto the probability simplex (Duchi et al. 2008; a token
whose probability reaches 0 is no longer sampled). p starts uniform.

BDPL is a search method on the shared ask/tell loop (`engine.search`):
`propose` samples and scores the step's prompts on the training batch
(target calls, one per example scored) and proposes the lowest-loss sample and
the distribution's mode (each position's most likely token, the paper's final
prompt); `update` applies the gradient step; the loop scores the proposals on
dev, keeps the best on dev, owns the budget, checkpoints and resume. The
distribution is the method's state (`state.data["probs"]`, k × P floats in the
loop's JSON checkpoint), so a resumed run continues exactly.

The result is a `TokenPrompt`: the found tokens, then what `instruction=auto`
(the default) keeps of the task's instruction, none (the paper: the learned tokens
are the whole prompt) and the instruction with 4 training examples, whichever
scores best on dev after the starting tokens. On SST-2's dev set SmolLM2-135M
scores 65.6 % with no instruction against 50.0 % with the task's; on a generation
task it answers in the task's format only with examples. Defaults are sized for a CPU (5 tokens, a pool of 100,
8 samples on batches of 8, 15 steps: about 2,000 examples scored with
SmolLM2-135M on SST-2's 32/32 split); the paper used I = 20 samples, larger
pools and 30 epochs of the training set. The step size was set from training
losses, not swept: SST-2 training batches give sampled prompts losses about
0.1-0.3 nats apart, and lr = 0.005 lets one step with such an advantage about
double a token's probability from uniform over 100 tokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ...engine.evaluate import example_losses
from ...engine.search import Candidate, SearchSettings, SearchState, search
from ...registry import register
from ..base import Method
from ..shared import INSTRUCTION_HELP, FixedInstruction, TokenOptions, allowed_tokens, start_ids, token_prompt, train_vocab


@dataclass
class BDPLConfig(TokenOptions):
    """BDPL options: the tokens searched, their vocabulary subset and the policy-gradient steps."""

    instruction: str = field(default="auto", metadata={"help": INSTRUCTION_HELP})
    pool: int = field(default=100, metadata={
        "help": "vocabulary subset: the N allowed tokens most frequent in the training inputs, instruction and "
                "label words (0 = every allowed token)"})
    samples: int = field(default=8, metadata={"help": "prompts I sampled per step (the estimator needs >= 2)"})
    batch_size: int = field(default=8, metadata={"help": "training examples each sampled prompt is scored on"})
    lr: float = field(default=0.005, metadata={
        "help": "step size on the probabilities (projected gradient descent on the simplex)"})
    steps: int = field(default=15, metadata={"help": "policy-gradient steps"})
    dev_examples: int = field(default=0, metadata={
        "help": "dev examples the loop selects on: N drawn once with a fixed seed (0 = all)"})
    patience: int = field(default=0, metadata={"help": "stop after this many steps without a better prompt on dev"})

    def __post_init__(self):
        super().__post_init__()
        if self.samples < 2 or self.batch_size < 1 or self.steps < 0 or self.pool < 0:
            raise ValueError("samples must be >= 2, batch_size >= 1, steps and pool >= 0")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.dev_examples < 0 or self.patience < 0:
            raise ValueError("dev_examples and patience must be >= 0")


# --- the estimator (pure functions on tensors) -------------------------------------------------
def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """(k, P) each row's Euclidean projection onto the probability simplex {p >= 0, Σ p = 1} (Duchi et al. 2008)."""
    u, _ = torch.sort(v, dim=-1, descending=True)  # (k, P)
    css = u.cumsum(-1) - 1  # (k, P)
    idx = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)  # (P,)
    rho = (u - css / idx > 0).sum(-1, keepdim=True)  # (k, 1): how many entries stay positive (>= 1)
    theta = css.gather(-1, rho - 1) / rho.to(v.dtype)  # (k, 1)
    return (v - theta).clamp_min(0)


def pg_gradient(probs: torch.Tensor, samples: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """(k, P) the variance-reduced policy-gradient estimate of the expected loss at `probs`.

    probs: (k, P) one categorical per position; samples: (I, k) the sampled indices;
    losses: (I,) each sample's loss. Baseline of sample k: the mean loss of the other I - 1.
    """
    I = samples.shape[0]
    baseline = (losses.sum() - losses) / (I - 1)  # (I,)
    adv = losses - baseline  # (I,)
    grad = torch.zeros_like(probs)  # (k, P)
    pos = torch.arange(probs.shape[0])
    for s, a in zip(samples, adv):  # ∇ log P(s) = 1/p at each chosen entry, 0 elsewhere
        grad[pos, s] += a / probs[pos, s].clamp_min(1e-12)
    return grad / I


def pg_step(probs: torch.Tensor, samples: torch.Tensor, losses: torch.Tensor, lr: float) -> torch.Tensor:
    """(k, P) the distribution after one projected descent step on the estimated gradient."""
    return project_simplex(probs - lr * pg_gradient(probs, samples, losses))


# --- the search ----------------------------------------------------------------------------------
class BDPLSearch(FixedInstruction):
    """One BDPL run as the loop's method; the distribution lives in `state.data["probs"]`."""

    def __init__(self, name: str, config: BDPLConfig, lm, task, seed: int):
        self.name, self.config, self.lm, self.task = name, config, lm, task
        c = config
        instruction = self.set_instructions(lm, task, c.instruction, c.demos, seed)
        allowed = allowed_tokens(lm, c.vocab)
        self.pool = train_vocab(lm, task, allowed, c.pool, instruction)  # (P,) token ids
        self.start = start_ids(lm, task, c.init, c.tokens, random.Random(seed), instruction, allowed)
        self._pending = None  # this step's samples and losses, from propose to update

    # --- what the loop asks ----------------------------------------------------------------
    def search_settings(self) -> SearchSettings:
        c = self.config
        return SearchSettings(steps=c.steps, selection="full", dev_examples=c.dev_examples, patience=c.patience)

    def initial(self, state: SearchState):
        P = len(self.pool)
        state.data["probs"] = [[1.0 / P] * P for _ in range(self.config.tokens)]
        state.data["losses"] = []
        return self.starts(self.start)

    def propose(self, state: SearchState) -> list[Candidate]:
        c = self.config
        self.use_body(state)
        probs = self.probs(state)  # (k, P)
        samples = [[state.rng.choices(range(len(self.pool)), weights=row)[0] for row in probs.tolist()]
                   for _ in range(c.samples)]  # I x k indices into the pool
        batch = state.rng.sample(state.train, min(c.batch_size, len(state.train)))
        losses = []
        for s in samples:
            p = self.prompt(self.ids(s))
            losses.append(state.target_call(lambda: float(example_losses(self.lm, self.task, p, batch).mean()),
                                            len(batch)))
        self._pending = (samples, losses)
        best = min(range(len(samples)), key=lambda i: losses[i])
        mode = probs.argmax(-1).tolist()
        step = state.step
        return [Candidate(self.prompt(self.ids(samples[best])), origin=f"sample@{step}"),
                Candidate(self.prompt(self.ids(mode)), origin=f"mode@{step}")]

    def update(self, state: SearchState, scored) -> None:
        """The projected policy-gradient step from this step's training losses (the loop keeps dev scores)."""
        self.keep_body(state, scored)
        if self._pending is None:  # the starting prompts' evaluation: nothing sampled yet
            return
        samples, losses = self._pending
        self._pending = None
        probs = pg_step(self.probs(state), torch.tensor(samples), torch.tensor(losses, dtype=torch.float64),
                        self.config.lr)
        state.data["probs"] = probs.tolist()
        state.data["losses"].append(losses)

    def estimate(self, state: SearchState) -> dict:
        c = self.config
        per_step = c.samples * min(c.batch_size, len(state.train)) + 2 * len(state.dev)
        return {"target_calls": len(state.dev) + self.extra_start_calls(state) + c.steps * per_step,
                "optimizer_calls": 0}

    # --- helpers -------------------------------------------------------------------------------
    def probs(self, state: SearchState) -> torch.Tensor:
        return torch.tensor(state.data["probs"], dtype=torch.float64)  # (k, P)

    def ids(self, indices) -> list[int]:
        return [self.pool[i] for i in indices]

    def prompt(self, found: list[int]):
        return token_prompt(self.lm, found, self.body, demos=self.demos)


@register("bdpl")
class BDPL(Method):
    """A categorical distribution per prompt position, trained by variance-reduced policy gradient from scores
    only (Diao et al. 2023)."""

    family = "blackbox"
    white_box = True
    Config = BDPLConfig
    smoke: ClassVar[dict] = {"steps": 2, "tokens": 2, "samples": 3, "batch_size": 4, "pool": 20}

    def fit(self, lm, task, ctx):
        run = BDPLSearch(self.name, self.config, lm, task, ctx.seed)
        best = search(run, lm, task, ctx)
        best.meta.update({"pool": len(run.pool)})
        return best
