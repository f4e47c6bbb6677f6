"""ProTeGi: Pryzant et al. 2023, "Automatic Prompt Optimization with "Gradient Descent" and Beam Search" (EMNLP 2023).

Textual gradients: for each prompt in the beam, the target answers a minibatch of
training examples; the optimizer reads the wrong ones and writes reasons why the
prompt failed (the "gradient"), then edits the prompt along each reason, and each
edit is expanded with paraphrases (Monte-Carlo successors). The beam and every new
candidate are then selected with a UCB bandit on dev (the paper's best selector),
and the best `beam` form the next beam. Registered as `protegi` and `apo`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...engine.search import Candidate, SearchState
from ...registry import register
from .common import (LLMConfig, LLMMethod, error_pool, format_errors, instruction_of, propose, sample, tried,
                     with_instruction)


def wrong_answers(state: SearchState, prompt, minibatch: int, k: int) -> list[dict]:
    """Up to k examples of a random training minibatch that `prompt` answers wrongly (target calls)."""
    batch = sample(state.rng, error_pool(state), minibatch)
    wrong = [r for r in state.score(prompt, batch) if r["score"] < 1]
    return sample(state.rng, wrong, k)


def gradient_edits(method: LLMMethod, state: SearchState, key: str, errors: list[dict]) -> tuple[list, list]:
    """(textual gradients, edited candidates) of candidate `key` from its `errors` (optimizer calls)."""
    c = method.config
    prompt = state.prompts[key]
    fields = {"prompt": instruction_of(prompt), "errors": format_errors(state.task, errors)}
    grads = propose(state, "error_feedback", fields, n=c.gradients, temperature=c.temperature,
                    fmt=c.proposer_format)
    edits: list[Candidate] = []
    for g in grads:
        seen = tried(state) + [instruction_of(x.prompt) for x in edits]
        for text in propose(state, "error_edit", {**fields, "feedback": g}, n=c.edits_per_gradient,
                            temperature=c.temperature, fmt=c.proposer_format, seen=seen):
            edits.append(Candidate(with_instruction(prompt, text), origin="edit", parent=key))
    return grads, edits


@register("protegi", "apo")
class ProTeGi(LLMMethod):
    """Textual gradients from errors, edits along them, paraphrase expansion, beam search with UCB selection."""

    smoke = {"steps": 1, "beam": 1, "minibatch": 4, "gradients": 1, "edits_per_gradient": 1, "paraphrases": 1,
             "dev_examples": 8}

    @dataclass
    class Config(LLMConfig):
        steps: int = field(default=3, metadata={"help": "beam-search steps"})
        selection: str = field(default="ucb", metadata={"help": "candidate selection: full | ucb | halving"})
        temperature: float = field(default=0.7, metadata={"help": "sampling temperature of the optimizer model"})
        beam: int = field(default=2, metadata={"help": "beam width"})
        minibatch: int = field(default=8, metadata={"help": "training examples answered to find errors"})
        errors: int = field(default=3, metadata={"help": "wrong examples shown per gradient request"})
        gradients: int = field(default=2, metadata={"help": "textual gradients (reasons) per beam prompt"})
        edits_per_gradient: int = field(default=1, metadata={"help": "edited prompts per gradient"})
        paraphrases: int = field(default=1, metadata={"help": "paraphrases (Monte-Carlo successors) per edit"})

        def __post_init__(self):
            super().__post_init__()
            for k in ("beam", "minibatch", "errors", "gradients", "edits_per_gradient"):
                if getattr(self, k) < 1:
                    raise ValueError(f"{k} must be >= 1")
            if self.paraphrases < 0:
                raise ValueError("paraphrases must be >= 0")

    def keep(self) -> int:
        return self.config.beam

    def propose(self, state):
        c = self.config
        beam = state.data.get("beam", [])
        out = [Candidate(state.prompts[k], origin="beam") for k in beam]  # scored already: free, win ties
        state.data["gradients"] = []
        for key in beam:
            errors = wrong_answers(state, state.prompts[key], c.minibatch, c.errors)
            if not errors:
                state.skip("no-errors")
                continue
            grads, edits = gradient_edits(self, state, key, errors)
            state.data["gradients"].append({"parent": key, "gradients": grads})
            out += edits
            for e in edits if c.paraphrases else []:
                seen = tried(state) + [instruction_of(x.prompt) for x in out]
                for text in propose(state, "paraphrase", {"instruction": instruction_of(e.prompt)}, n=c.paraphrases,
                                    temperature=c.temperature, fmt=c.proposer_format, seen=seen):
                    out.append(Candidate(with_instruction(e.prompt, text), origin="paraphrase", parent=e.prompt.hash))
        return out

    def update(self, state, scored):
        state.data["beam"] = [r.key for r in scored[: self.config.beam]]

    def optimizer_calls_per_step(self) -> int:
        c = self.config
        per_prompt = c.gradients * (1 + c.edits_per_gradient * (1 + c.paraphrases))
        return c.beam * per_prompt

    def per_step(self, state):
        c = self.config
        n = c.beam * (1 + c.gradients * c.edits_per_gradient * (1 + c.paraphrases))
        return n, c.beam * c.minibatch
