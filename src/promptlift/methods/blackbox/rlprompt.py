"""RLPrompt: Deng et al. 2022, "RLPrompt: Optimizing Discrete Text Prompts with Reinforcement Learning"
(EMNLP 2022).

A policy writes the prompt one token at a time. As in the paper, the policy is a
frozen language model with a small trainable MLP between its last hidden state
and its output head: at each position the frozen model reads the tokens written
so far (after a start token), its final hidden state h (hidden,) goes through
the MLP (hidden -> `hidden_size` -> hidden, ReLU; initialised near zero as the
paper's code, so the first policy is near uniform), and the model's own output
head turns MLP(h) into token logits. The frozen model here is the task model
itself (the paper used distilGPT-2 beside a larger task model), read through
the HF backend's `forward` and `logits`; only the MLP learns. Its action space
is the `pool` allowed tokens most frequent in the training inputs, instruction
and label words (`shared.train_vocab`), a restriction the paper's code offers
as top-k "fluent" sampling; the paper samples from the whole vocabulary over
12,000 steps, which a CPU budget of a few dozen steps cannot explore.

Reward is the paper's classification reward, from label scores only (the task
model is never differentiated): with P(c) the label probabilities of an example
(softmax over the label words' scores),

    gap = P(gold) − max_{c ≠ gold} P(c),   r = gap · (200 if correct else 180)

averaged over the step's training batch. A generation task's reward is the
reference output's log-probability (minus `engine.evaluate.example_losses`),
averaged the same way; the z-score makes its scale irrelevant. The prompts of a step all answer the
policy's one input (classification prompts do not see the example), so the
paper's input-specific z-score normalises each step's rewards across its
sampled prompts. The policy learns by REINFORCE (not the paper's soft
Q-learning): loss = −mean_k z_k Σ_t log π(a_{k,t} | a_{k,<t}), one Adam step per
search step.

RLPrompt is a search method on the shared ask/tell loop (`engine.search`):
`propose` samples the step's prompts, scores each on a training batch (target
calls, one per example scored; the policy's own forward passes are counted as
forward passes of the model) and proposes the highest-reward sample and the
policy's greedy prompt; `update` takes the REINFORCE step; the loop scores the
proposals on dev and keeps the best on dev, owns the budget, checkpoints and
resume. The MLP's weights and Adam's moments are the method's state, stored in
the loop's JSON checkpoint as base64 float32 (`state.data["policy"]`; about
2 MB with the defaults), so a resumed run continues exactly.

The result is a `TokenPrompt`: the generated tokens, then what `instruction=auto`
(the default) keeps of the task's instruction, none (the paper: the generated
tokens alone) and the instruction with 4 training examples, whichever scores
best on dev after the starting tokens. Defaults are sized for a CPU (5 tokens, a pool of 100, MLP
width 128, 8 samples on batches of 8, 15 steps: about 2,000 examples scored
with SmolLM2-135M on SST-2's 32/32 split); the paper: MLP width 2048, 16
prompts per step, 12,000 steps. The learning rate was chosen from training
signals only: with lr = 0.005, SmolLM2-135M's policy on SST-2 (seed 0) drew 8
identical prompts from step 4 on (equal rewards: no gradient left, the rest of
the budget spent on one prompt); on the synthetic test task lr = 0.001 still
draws 8 distinct prompts at step 15. REINFORCE has no entropy term (the
paper's soft Q-learning has one), so a policy can collapse: the per-step
rewards in the checkpoint (`state.data["rewards"]`) show it.
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ...engine.evaluate import classify_scores, example_losses
from ...engine.search import Candidate, SearchSettings, SearchState, search
from ...errors import ConfigError
from ...registry import register
from ..base import Method
from ..shared import INSTRUCTION_HELP, FixedInstruction, TokenOptions, allowed_tokens, start_ids, token_prompt, train_vocab

CORRECT, WRONG = 200.0, 180.0  # the paper's reward scales (lambda_2, lambda_1)


@dataclass
class RLPromptConfig(TokenOptions):
    """RLPrompt options: the tokens generated, the policy and the REINFORCE steps."""

    instruction: str = field(default="auto", metadata={"help": INSTRUCTION_HELP})
    pool: int = field(default=100, metadata={
        "help": "action space: the N allowed tokens most frequent in the training inputs, instruction and label "
                "words (0 = every allowed token)"})
    hidden_size: int = field(default=128, metadata={"help": "width of the policy's MLP (the paper: 2048)"})
    samples: int = field(default=8, metadata={"help": "prompts sampled per step (z-scored together; >= 2)"})
    batch_size: int = field(default=8, metadata={"help": "training examples each sampled prompt is scored on"})
    lr: float = field(default=0.001, metadata={"help": "Adam learning rate of the policy's MLP"})
    steps: int = field(default=15, metadata={"help": "REINFORCE steps"})
    dev_examples: int = field(default=0, metadata={
        "help": "dev examples the loop selects on: N drawn once with a fixed seed (0 = all)"})
    patience: int = field(default=0, metadata={"help": "stop after this many steps without a better prompt on dev"})

    def __post_init__(self):
        super().__post_init__()
        if self.samples < 2 or self.batch_size < 1 or self.steps < 0 or self.pool < 0 or self.hidden_size < 1:
            raise ValueError("samples must be >= 2, batch_size and hidden_size >= 1, steps and pool >= 0")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.dev_examples < 0 or self.patience < 0:
            raise ValueError("dev_examples and patience must be >= 0")


# --- reward (pure functions on tensors) ----------------------------------------------------------
def gap_reward(scores: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """(E,) the paper's per-example reward from label scores (E, L) and gold label indices (E,)."""
    p = scores.float().softmax(-1)  # (E, L)
    right = p.gather(-1, gold[:, None]).squeeze(-1)  # (E,)
    wrong = p.scatter(-1, gold[:, None], float("-inf")).max(-1).values  # (E,)
    gap = right - wrong
    return gap * torch.where(gap > 0, CORRECT, WRONG)


def zscore(r: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(I,) rewards normalised across the prompts of one input (all zeros if they are all equal)."""
    return (r - r.mean()) / (r.std(unbiased=False) + eps)


# --- the policy ------------------------------------------------------------------------------------
class PromptPolicy(nn.Module):
    """The trainable MLP between the frozen model's final hidden state and its output head."""

    def __init__(self, hidden: int, width: int, seed: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(hidden, width), nn.ReLU(), nn.Linear(width, hidden))
        g = torch.Generator().manual_seed(seed)
        for m in self.mlp:
            if isinstance(m, nn.Linear):  # the paper's code: near zero, so the first policy is near uniform
                nn.init.xavier_uniform_(m.weight, gain=1e-4, generator=g)
                nn.init.constant_(m.bias, -1e-4)

    def logits(self, lm, h: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        """(..., P) logits over the pool's tokens from the frozen model's hidden states h (..., hidden)."""
        out = self.mlp(h.float())  # (..., hidden)
        return lm.logits(out.to(lm.device)).to(h.device)[..., pool]  # (..., P)


def pack(t: torch.Tensor) -> dict:
    """A float32 tensor as JSON: its shape and little-endian bytes in base64."""
    a = t.detach().cpu().float().numpy().astype("<f4")
    return {"shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode("ascii")}


def unpack(d: dict) -> torch.Tensor:
    a = np.frombuffer(base64.b64decode(d["data"]), dtype="<f4").reshape(d["shape"])
    return torch.from_numpy(a.copy())


def adam_step(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], m: dict, v: dict, t: int, lr: float,
              betas=(0.9, 0.999), eps: float = 1e-8) -> None:
    """One Adam step (Kingma & Ba 2015) on `params` in place; `m`, `v` (same keys) updated in place; t counts from 1."""
    b1, b2 = betas
    for k, p in params.items():
        g = grads[k]
        m[k].mul_(b1).add_(g, alpha=1 - b1)
        v[k].mul_(b2).addcmul_(g, g, value=1 - b2)
        mhat = m[k] / (1 - b1 ** t)
        vhat = v[k] / (1 - b2 ** t)
        p.sub_(lr * mhat / (vhat.sqrt() + eps))


# --- the search ------------------------------------------------------------------------------------
class RLPromptSearch(FixedInstruction):
    """One RLPrompt run as the loop's method; the policy's weights live in `state.data["policy"]`."""

    def __init__(self, name: str, config: RLPromptConfig, lm, task, seed: int):
        self.name, self.config, self.lm, self.task, self.seed = name, config, lm, task, seed
        c = config
        instruction = self.set_instructions(lm, task, c.instruction, c.demos, seed)
        allowed = allowed_tokens(lm, c.vocab)
        self.pool = train_vocab(lm, task, allowed, c.pool, instruction)  # (P,) token ids
        self.pool_t = torch.tensor(self.pool, dtype=torch.long)
        self.start = start_ids(lm, task, c.init, c.tokens, random.Random(seed), instruction, allowed)
        tok = lm.tokenizer
        self.context = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id  # the policy's input
        if self.context is None:
            raise ConfigError(f"{lm.model_id}'s tokenizer has no BOS or EOS token to start the policy from")
        self.policy = PromptPolicy(lm.hidden_size, c.hidden_size, seed)
        self._pending = None  # this step's hidden states, actions and rewards, from propose to update

    # --- what the loop asks ----------------------------------------------------------------
    def search_settings(self) -> SearchSettings:
        c = self.config
        return SearchSettings(steps=c.steps, selection="full", dev_examples=c.dev_examples, patience=c.patience)

    def initial(self, state: SearchState):
        self.save(state)
        state.data["rewards"] = []
        return self.starts(self.start)

    def propose(self, state: SearchState) -> list[Candidate]:
        c = self.config
        self.use_body(state)
        self.load(state)
        gen = torch.Generator().manual_seed(state.rng.randrange(2**31))
        hs, acts = state.target_call(lambda: self.rollout(c.samples, gen), 0)  # (I, k, hidden), (I, k)
        batch = state.rng.sample(state.train, min(c.batch_size, len(state.train)))
        rewards = []
        for a in acts.tolist():
            p = self.prompt(self.ids(a))
            rewards.append(state.target_call(lambda: self.reward(p, batch), len(batch)))
        self._pending = (hs, acts, rewards)
        _, greedy = state.target_call(lambda: self.rollout(1, None), 0)  # (1, k)
        best = max(range(len(rewards)), key=lambda i: rewards[i])
        step = state.step
        return [Candidate(self.prompt(self.ids(acts[best].tolist())), origin=f"sample@{step}"),
                Candidate(self.prompt(self.ids(greedy[0].tolist())), origin=f"greedy@{step}")]

    def update(self, state: SearchState, scored) -> None:
        """One REINFORCE step on this step's z-scored rewards (the loop keeps the dev scores)."""
        self.keep_body(state, scored)
        if self._pending is None:  # the starting prompts' evaluation: nothing sampled yet
            return
        hs, acts, rewards = self._pending
        self._pending = None
        self.load(state)
        grads = reinforce_grads(self.policy, self.lm, hs, acts, zscore(torch.tensor(rewards)), self.pool_t)
        params = dict(self.policy.named_parameters())
        m, v, t = self.moments(state)
        with torch.no_grad():
            adam_step(params, grads, m, v, t + 1, self.config.lr)
        state.data["rewards"].append(rewards)
        self.save(state, m, v, t + 1)

    def reward(self, prompt, batch) -> float:
        """The batch's mean reward: the label gap (classification) or the reference's log-probability (generation)."""
        if self.task.is_classification:
            gold = torch.tensor([self.task.label_names.index(ex.output) for ex in batch])
            scores = classify_scores(self.lm, self.task, prompt, batch)  # (B, L)
            return float(gap_reward(scores, gold).mean())
        return float(-example_losses(self.lm, self.task, prompt, batch).mean())

    def estimate(self, state: SearchState) -> dict:
        c = self.config
        per_step = c.samples * min(c.batch_size, len(state.train)) + 2 * len(state.dev)
        return {"target_calls": len(state.dev) + self.extra_start_calls(state) + c.steps * per_step,
                "optimizer_calls": 0}

    # --- the policy: rollouts and its JSON state -----------------------------------------------
    @torch.no_grad()
    def rollout(self, n: int, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """n prompts of k pool indices, sampled with `gen` (None: greedy), and the hidden states they were drawn from.

        Returns hs (n, k, hidden) float32 on CPU and actions (n, k) long.
        """
        lm, k = self.lm, self.config.tokens
        h, kv = lm.forward(ids=torch.full((n, 1), self.context, dtype=torch.long))  # (n, 1, hidden)
        hs, acts = [], []
        for t in range(k):
            ht = h[:, -1].float().cpu()  # (n, hidden)
            logits = self.policy.logits(lm, ht, self.pool_t)  # (n, P)
            a = logits.argmax(-1) if gen is None else torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]
            hs.append(ht)
            acts.append(a)
            if t + 1 < k:
                h, kv = lm.forward(ids=self.pool_t[a].view(n, 1), past=kv)
        return torch.stack(hs, 1), torch.stack(acts, 1)

    def save(self, state: SearchState, m: dict | None = None, v: dict | None = None, t: int = 0) -> None:
        params = dict(self.policy.named_parameters())
        zeros = {k: torch.zeros_like(p) for k, p in params.items()}
        m, v = m or zeros, v or zeros
        state.data["policy"] = {"params": {k: pack(p) for k, p in params.items()},
                                "m": {k: pack(x) for k, x in m.items()}, "v": {k: pack(x) for k, x in v.items()},
                                "t": t}

    def load(self, state: SearchState) -> None:
        """Set the MLP to the weights in `state.data` (so a resumed or redone step starts from the checkpoint's)."""
        with torch.no_grad():
            for k, p in self.policy.named_parameters():
                p.copy_(unpack(state.data["policy"]["params"][k]))

    def moments(self, state: SearchState) -> tuple[dict, dict, int]:
        d = state.data["policy"]
        return ({k: unpack(x) for k, x in d["m"].items()}, {k: unpack(x) for k, x in d["v"].items()}, int(d["t"]))

    def ids(self, indices) -> list[int]:
        return [self.pool[i] for i in indices]

    def prompt(self, found: list[int]):
        return token_prompt(self.lm, found, self.body, demos=self.demos)


def reinforce_grads(policy: PromptPolicy, lm, hs: torch.Tensor, acts: torch.Tensor, z: torch.Tensor,
                    pool: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of the REINFORCE loss −mean_k z_k Σ_t log π(a_{k,t}) for the policy's parameters.

    hs: (I, k, hidden) the frozen model's hidden states the actions were drawn from;
    acts: (I, k) pool indices; z: (I,) normalised rewards. The frozen model is not differentiated
    (its hidden states are inputs here); the gradient passes through its output head to the MLP.
    """
    policy.zero_grad(set_to_none=True)
    with torch.enable_grad():
        logp = policy.logits(lm, hs, pool).log_softmax(-1)  # (I, k, P)
        chosen = logp.gather(-1, acts[..., None]).squeeze(-1).sum(-1)  # (I,)
        loss = -(z.to(chosen.dtype) * chosen).mean()
        loss.backward()
    return {k: p.grad.detach().clone() for k, p in policy.named_parameters()}


@register("rlprompt")
class RLPrompt(Method):
    """A small MLP policy on a frozen LM writes prompt tokens; REINFORCE on the task reward, z-scored
    (Deng et al. 2022)."""

    family = "blackbox"
    white_box = True
    Config = RLPromptConfig
    smoke: ClassVar[dict] = {"steps": 2, "tokens": 2, "samples": 3, "batch_size": 4, "pool": 20, "hidden_size": 8}

    def fit(self, lm, task, ctx):
        run = RLPromptSearch(self.name, self.config, lm, task, ctx.seed)
        best = search(run, lm, task, ctx)
        best.meta.update({"pool": len(run.pool)})
        return best
