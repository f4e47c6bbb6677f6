"""How a `MixturePrompt` answers: its members' answer distributions, mixed with its weights.

Qin & Eisner 2021, "Learning How to Ask: Querying LMs with Mixtures of Soft Prompts":

    log p(label | x) = log sum_k w_k(x) p_k(label | x)      (N, L)   `label_scores`
    log p(answer | x) = log sum_k w_k(x) p_k(answer | x)    (N,)     `answer_scores`

p_k(label | x) is the softmax over the labels of member k's label scores (each member through its own
applier, so its checks and cached prefix are its own). Where every member's condition is a cached prefix
followed by the same token rows (soft prompts with one instruction, as `soft-mixture` makes them), the K
members are scored in ONE batched pass: each input's row is repeated K times, row k reading member k's
prefix (`Cond.prefix_rows`); otherwise each member is scored in a pass of its own.

Generation (`generate`, the proxy's free-text answers) is not a mixture: each input is decoded with its
highest-weight member (argmax_k w_k(x)). A per-step mixture of next-token distributions would need K
decoders in lock-step; rank classification, which is what the mixture is trained for, reads the
mixture exactly, and a served classifier route answers with it (`classify` ranks `label_scores`).

A mixture with `choose="argmax"` (dynamic prompting, `methods/soft/dynamic.py`) answers each input with its
highest-weight member alone. The trainers (`methods/soft/mixture.py`, `dynamic.py`) use the same
`log_weights` and `mix`, so training and inference weigh members identically.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..artifacts import MixturePrompt
from ..errors import ArtifactError, ConfigError
from ..kv import merge_prefixes
from .apply import Applier, applier_for, applies, label_words, one_choice, per_choice, query_text
from .backends import Cond


def input_features(lm, inputs: Sequence) -> torch.Tensor:
    """(N, hidden) float32: the L2-normalised mean of each input's token embeddings (its last user message).

    What a mixture's gate reads; no forward pass, only the embedding table.
    """
    rows = []
    with torch.no_grad():
        for x in inputs:
            ids = lm.encode(query_text(x))
            if not ids:
                rows.append(torch.zeros(lm.hidden_size, device=lm.device))
                continue
            rows.append(lm.embed(torch.tensor(ids, device=lm.device)).float().mean(0))
    feats = torch.stack(rows) if rows else torch.zeros(0, lm.hidden_size, device=lm.device)
    return F.normalize(feats, dim=-1)


def log_weights(weights: torch.Tensor, gate: torch.Tensor | None, feats: torch.Tensor | None) -> torch.Tensor:
    """(N, K) log mixture weights: log_softmax(weights + gate @ f(x)).

    weights: (K,); gate: (K, hidden) or None/empty; feats: (N, hidden) (`input_features`), or None (N = 1).
    Differentiable in weights and gate.
    """
    logits = weights.float().unsqueeze(0)  # (1, K)
    if gate is not None and gate.numel():
        logits = logits + feats.to(gate.device, torch.float32) @ gate.float().T  # (N, K)
    elif feats is not None:
        logits = logits.expand(feats.shape[0], -1)
    return torch.log_softmax(logits, dim=-1)


def mix(member_logp: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """log sum_k w_k p_k: member_logp (N, K, ...) log-probabilities, log_w (N, K) -> (N, ...)."""
    lw = log_w.to(member_logp.device, member_logp.dtype)
    lw = lw.reshape(*lw.shape, *([1] * (member_logp.dim() - 2)))
    return torch.logsumexp(member_logp + lw, dim=1)


@applies(MixturePrompt)
class MixtureApplier(Applier):
    """Members scored through their own appliers (in one batched pass where their conditions allow), mixed."""

    def check(self, prompt, backend, task):
        super().check(prompt, backend, task)  # each member's own checks (model, hidden size, ...)
        for i, m in enumerate(prompt.members):
            n = applier_for(m).stages(m)
            if n != 1:
                raise ConfigError(f"mixture member {i} is a {m.type} prompt answering in {n} stages; a mixture "
                                  "mixes one-stage answer distributions")
        if prompt.gated:
            if not backend.white_box:
                raise ConfigError("this mixture's weights depend on the input through the local model's embeddings "
                                  f"(gate=input), which {backend.lm.model_id} cannot compute")
            if prompt.gate.shape[1] != backend.lm.hidden_size:
                raise ArtifactError(f"mixture gate has hidden size {prompt.gate.shape[1]}, the model "
                                    f"{backend.lm.hidden_size}")

    def weights_of(self, prompt: MixturePrompt, backend, inputs) -> torch.Tensor:
        """(N, K) log weights of each member for each input (`choose="argmax"`: 0 for the chosen one, -inf else)."""
        feats = input_features(backend.lm, inputs) if prompt.gated else torch.zeros(len(inputs), 0)
        lw = log_weights(prompt.weights, prompt.gate if prompt.gated else None, feats).cpu()
        if prompt.choose == "argmax":
            lw = torch.full_like(lw, float("-inf")).scatter(1, lw.argmax(1, keepdim=True), 0.0)
        return lw

    def chosen(self, prompt: MixturePrompt, backend, inputs) -> list[int]:
        """Each input's highest-weight member: what generation decodes with."""
        return self.weights_of(prompt, backend, inputs).argmax(-1).tolist()

    def _member_scores(self, prompt, backend, task, inputs, answer_prefixes, verb: str, extra) -> torch.Tensor:
        """(N, K, ...) each member's scores by `verb` ("label_scores" | "answer_scores"), batched when possible."""
        members = prompt.members
        aps = [applier_for(m) for m in members]
        if all(getattr(type(a), verb) is getattr(Applier, verb) for a in aps):  # scored from their conditions
            conds = [a.condition(m, backend, task, inputs, answer_prefixes) for a, m in zip(aps, members)]
            one = _one_pass(conds)
            if one is not None:
                per_row = extra if verb == "label_scores" else [a for a in extra for _ in members]
                s = getattr(backend, verb)(one, per_row)  # (N*K, ...)
                return s.reshape(len(inputs), len(members), *s.shape[1:])
            return torch.stack([getattr(backend, verb)(c, extra) for c in conds], dim=1)
        if verb == "label_scores":
            return torch.stack([a.label_scores(m, backend, task, inputs, answer_prefixes)
                                for a, m in zip(aps, members)], dim=1)
        return torch.stack([a.answer_scores(m, backend, task, inputs, extra) for a, m in zip(aps, members)], dim=1)

    def label_scores(self, prompt, backend, task, inputs, answer_prefixes=None):
        s = self._member_scores(prompt, backend, task, inputs, answer_prefixes, "label_scores", label_words(task))
        return mix(torch.log_softmax(s.float(), dim=-1), self.weights_of(prompt, backend, inputs))

    def answer_scores(self, prompt, backend, task, inputs, answers):
        s = self._member_scores(prompt, backend, task, inputs, None, "answer_scores", list(answers))
        return mix(s.float(), self.weights_of(prompt, backend, inputs))

    def prompt_tokens(self, prompt, backend, task, inputs):
        """Every member's positions: a request is scored under all K members (`choose="argmax"`: the chosen
        member's, the one prompt that answers the input)."""
        per = [applier_for(m).prompt_tokens(m, backend, task, inputs) for m in prompt.members]
        if prompt.choose == "argmax":
            return [per[k][i] for i, k in enumerate(self.chosen(prompt, backend, inputs))]
        return [sum(col) for col in zip(*per)]

    def condition(self, prompt, backend, task, inputs, answer_prefixes=None):
        """The condition the answers are generated from: the inputs' highest-weight member's (one member for all)."""
        m = one_choice(self.chosen(prompt, backend, inputs), prompt.members, "mixture")
        return applier_for(m).generation_condition(m, backend, task, inputs, answer_prefixes)

    def generate(self, prompt, backend, task, inputs, cfg, answer_prefixes=None):
        return per_choice(self.chosen(prompt, backend, inputs), prompt.members, answer_prefixes,
                          lambda m, idx, ap: applier_for(m).generate(m, backend, task, [inputs[i] for i in idx], cfg, ap))


def _one_pass(conds: list) -> Cond | None:
    """One condition scoring every member on every input (row n*K + k: input n under member k), or None when
    the members' conditions differ in more than their cached prefix."""
    if not all(isinstance(c, Cond) and c.prefix is not None and c.prefix_rows is None for c in conds):
        return None
    first = conds[0]
    if any(c.rows != first.rows or c.sep != first.sep for c in conds[1:]):
        return None
    k = len(conds)
    return Cond(merge_prefixes([c.prefix for c in conds]), [r for r in first.rows for _ in range(k)], first.sep,
                first.stop, prefix_rows=[j for _ in first.rows for j in range(k)])


__all__ = ["MixtureApplier", "input_features", "log_weights", "mix"]
