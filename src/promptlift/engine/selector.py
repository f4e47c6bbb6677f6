"""How a `SelectorPrompt` answers: per input, its classifier picks a member, and that member's applier answers.

    features(x) -> member k = argmax classifier(features(x)) -> applier_for(member k) on x

Inputs are grouped by chosen member (each group in one call to that member's applier) and the answers put
back in input order, so a batch through the selector gives what each input would get through its member.
Features are TF-IDF over the stored vocabulary (`neighbors.tfidf_vectors`, any backend) or the model's own
embedding (`WhiteBox.embed_texts`, local models only). A request of one input is its member's request:
`generation_condition` is the member's, so the proxy batches it with other requests, and `served_by` names
the member that answers (the proxy's `x-promptlift-prompt` header).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..artifacts import SelectorPrompt
from ..errors import ArtifactError, ConfigError
from ..lm.base import same_model
from .apply import Applier, applier_for, applies, one_choice, per_choice, query_text
from .neighbors import tfidf_vectors


def selector_features(prompt: SelectorPrompt, backend, inputs: Sequence) -> torch.Tensor:
    """(N, D) float32 features of the inputs (their last user messages), as the selector was trained on them."""
    texts = [query_text(x) for x in inputs]
    if prompt.features == "tfidf":
        return tfidf_vectors(texts, prompt.vocab, prompt.idf)
    return backend.embed_texts(texts).float().cpu()


def classifier_logits(prompt: SelectorPrompt, feats: torch.Tensor) -> torch.Tensor:
    """(N, K) member logits of (N, D) features: linear, or one ReLU hidden layer when w1 has rows."""
    h = feats.float()
    if prompt.w1.numel():
        h = torch.relu(h @ prompt.w1.float().T + prompt.b1.float())
    return h @ prompt.w2.float().T + prompt.b2.float()


@applies(SelectorPrompt)
class SelectorApplier(Applier):
    """Each input answered by the member the selector's classifier picks for it."""

    def check(self, prompt, backend, task):
        if prompt.features == "model":
            if not backend.white_box:
                raise ConfigError(f"this selector reads the local model's own embeddings (features=model), which "
                                  f"{backend.lm.model_id} cannot compute; re-make it with --features tfidf")
            width = backend.embed_texts(["x"]).shape[-1]
            if width != prompt.dim:
                raise ArtifactError(f"selector features are {prompt.dim} wide, the model's embeddings {width}: it "
                                    "was made on another model")
        for i, m in enumerate(prompt.members):
            if not m.text_only and not same_model(m.model, backend.lm):
                raise ArtifactError(f"selector member {i} ({m.type} prompt for task {m.task!r}) was made for model "
                                    f"{m.model!r}, not {backend.lm.model_id!r}")
        super().check(prompt, backend, task)  # each member's own checks

    def chosen(self, prompt: SelectorPrompt, backend, inputs: Sequence) -> list[int]:
        """Each input's member index."""
        if not inputs:
            return []
        return classifier_logits(prompt, selector_features(prompt, backend, inputs)).argmax(-1).tolist()

    def served_by(self, prompt, backend, task, inputs):
        return [s for k, x in zip(self.chosen(prompt, backend, inputs), inputs)
                for s in applier_for(prompt.members[k]).served_by(prompt.members[k], backend, task, [x])]

    def _per_member(self, prompt, backend, inputs, prefixes, call: Callable) -> list:
        """`call(member, idx, prefixes)` for each chosen member's inputs; its per-input results back in input order."""
        return per_choice(self.chosen(prompt, backend, inputs), prompt.members, prefixes, call)

    def label_scores(self, prompt, backend, task, inputs, answer_prefixes=None):
        rows = self._per_member(prompt, backend, inputs, answer_prefixes, lambda m, idx, ap: applier_for(m).label_scores(
            m, backend, task, [inputs[i] for i in idx], ap))
        return torch.stack([r.float() for r in rows]) if rows else torch.zeros(0, len(task.labels))

    def answer_scores(self, prompt, backend, task, inputs, answers):
        rows = self._per_member(prompt, backend, inputs, None, lambda m, idx, _: applier_for(m).answer_scores(
            m, backend, task, [inputs[i] for i in idx], [answers[i] for i in idx]))
        return torch.stack([r.float() for r in rows]) if rows else torch.zeros(0)

    def generate(self, prompt, backend, task, inputs, cfg, answer_prefixes=None):
        """Each input's member generates its answer; with no task given, with that member's own label words."""
        return self._per_member(prompt, backend, inputs, answer_prefixes, lambda m, idx, ap: applier_for(m).generate(
            m, backend, task if task is not None else m.label_task(), [inputs[i] for i in idx], cfg, ap))

    def prompt_tokens(self, prompt, backend, task, inputs):
        return self._per_member(prompt, backend, inputs, None, lambda m, idx, _: applier_for(m).prompt_tokens(
            m, backend, task, [inputs[i] for i in idx]))

    def stages(self, prompt):
        return max(applier_for(m).stages(m) for m in prompt.members)

    def condition(self, prompt, backend, task, inputs, answer_prefixes=None):
        """The chosen member's condition, when every input chooses the same member (one request does)."""
        m = one_choice(self.chosen(prompt, backend, inputs), prompt.members, "selector")
        return applier_for(m).generation_condition(m, backend, task if task is not None else m.label_task(),
                                                   inputs, answer_prefixes)


__all__ = ["SelectorApplier", "classifier_logits", "selector_features"]
