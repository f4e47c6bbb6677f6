"""What each artifact type does at inference: one applier per type, looked up by type.

An applier turns (artifact, inputs) into a condition for a backend
(`engine.backends`) and asks it for label scores or generations. The engine,
the black-box path and the proxy all go through here, so a prompt is applied
the same way everywhere; nothing outside this package asks which kind of
prompt it holds.

    applier_for(prompt).label_scores(prompt, backend, task, inputs)   # (N, L)
    applier_for(prompt).generate(prompt, backend, task, inputs, cfg)  # N strings
    applier_for(prompt).stages(prompt)                                 # model calls per answer
    applier_for(prompt).generation_condition(prompt, backend, task, inputs)  # what `generate` decodes

`generation_condition` is "condition once, then decode it yourself": the proxy
decodes the conditions of many requests (of different artifacts) in one batch.
A backend given a `PrefixCache` keeps each artifact's constant prefix (soft
vectors, learned keys/values, token ids) across calls (`WhiteBox.constant_prefix`).

`inputs` are user texts or lists of chat messages (see `promptlift.render`).
`answer_prefixes` (one per input) open the answer with text the model
continues; chain of thought uses them.

Adding an artifact type: declare its dataclass in `promptlift.artifacts`, and
an `Applier` subclass decorated with `@applies(ThatType)` in the engine.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

from ..artifacts import Calibrated, KnnPrompt, Prompt, Reasoning, TextPrompt, TokenPrompt
from ..errors import ArtifactError, ConfigError, UnsupportedError
from ..lm.base import GenerationConfig, same_model
from ..render import normalize_messages, render
from ..template import answer_sep, build_layout, to_ids
from .backends import Cond

_APPLIERS: dict[type, "Applier"] = {}


def applies(prompt_type: type):
    """Class decorator: the applier of `prompt_type` (one instance, no state)."""

    def deco(cls):
        _APPLIERS[prompt_type] = cls()
        return cls

    return deco


def applier_for(prompt: Prompt) -> "Applier":
    """The applier registered for the prompt's type (its class or nearest registered base)."""
    for cls in type(prompt).__mro__:
        if cls in _APPLIERS:
            return _APPLIERS[cls]
    raise ArtifactError(f"no applier is registered for prompt type {type(prompt).__name__!r}")


def label_words(task) -> list[str]:
    """Every label's words, in `task.labels` order (the candidates of rank classification)."""
    return list(task.labels.values())


def _labels_map(task):
    return task.labels if task is not None and task.is_classification else None


def labels_key(labels) -> tuple:
    """What a prompt's constant prefix depends on besides the prompt: the label words its demonstrations
    answer with (a key of `PrefixCache`)."""
    return tuple(labels.items()) if labels else ()


def query_text(x: Any) -> str:
    """The text of an input to compare or embed: itself, or its last user message."""
    if isinstance(x, str):
        return x
    return [c for r, c in normalize_messages(x) if r == "user"][-1]


class Applier:
    """Base applier. Subclasses define `condition`; wrappers override the verbs."""

    def stages(self, prompt: Prompt) -> int:
        """How many times `generate` asks the backend before it answers (1: one condition, one answer).

        A prompt of one stage is fully described by its `condition`, so a caller can
        take that condition and run or send it itself (the proxy does).
        """
        return 1

    def generation_prompt(self, prompt: Prompt) -> Prompt:
        """The artifact whose condition this prompt's answers are generated from: itself by default;
        a wrapper that changes only label scores (calibration) answers with its inner prompt's."""
        return prompt

    def served_by(self, prompt: Prompt, backend, task, inputs: Sequence[Any]) -> list[Prompt]:
        """Per input, the artifact that answers it: the prompt itself, or the member a selector picks for it (the
        proxy runs that member's request and names it in `x-promptlift-prompt`)."""
        return [prompt] * len(inputs)

    def check(self, prompt: Prompt, backend, task) -> None:
        """Refuse, before any model call, what this prompt cannot do on this backend and task."""
        for child in prompt.children():
            applier_for(child).check(child, backend, task)

    def condition(self, prompt: Prompt, backend, task, inputs: Sequence[Any],
                  answer_prefixes: Sequence[str] | None = None):
        """The backend condition of `inputs` under `prompt`."""
        raise NotImplementedError(f"{type(self).__name__} must define condition()")

    def label_scores(self, prompt: Prompt, backend, task, inputs: Sequence[Any],
                     answer_prefixes: Sequence[str] | None = None) -> torch.Tensor:
        """(N, labels) scores of each label's words (log-probabilities, or calibrated ones)."""
        return backend.label_scores(self.condition(prompt, backend, task, inputs, answer_prefixes), label_words(task))

    def answer_scores(self, prompt: Prompt, backend, task, inputs: Sequence[Any], answers: Sequence[str]) -> torch.Tensor:
        """(N,) log-probability of each input's reference answer (generation tasks)."""
        return backend.answer_scores(self.condition(prompt, backend, task, inputs), list(answers))

    def generation_condition(self, prompt: Prompt, backend, task, inputs: Sequence[Any],
                             answer_prefixes: Sequence[str] | None = None):
        """The one condition `generate` decodes (prompts of one stage): a caller may decode it itself.

        A prompt answered in several stages reads the model's first answer before asking again: it has no
        such condition (UnsupportedError).
        """
        n = self.stages(prompt)
        if n != 1:
            raise UnsupportedError(f"a {prompt.type} prompt answers in {n} stages (it reads the model's first "
                                   "answer before asking again); it has no one condition to decode")
        return self.condition(prompt, backend, task, inputs, answer_prefixes)

    def generate(self, prompt: Prompt, backend, task, inputs: Sequence[Any], cfg: GenerationConfig,
                 answer_prefixes: Sequence[str] | None = None) -> list[str]:
        """One answer per input."""
        return backend.generate(self.generation_condition(prompt, backend, task, inputs, answer_prefixes), cfg)

    def prompt_tokens(self, prompt: Prompt, backend, task, inputs: Sequence[Any]) -> list[float]:
        """Per input, the positions the prompt puts before it: those of its condition minus those of the bare
        input (no instruction, no demonstrations) on the same backend (`backend.positions`, whose unit is
        `backend.positions_unit`). Text tokens and virtual ones (soft vectors, learned keys/values, token ids)
        alike; a type whose one request runs several conditions (a mixture) says so by overriding this."""
        cond = self.condition(prompt, backend, task, inputs)
        return [float(a - b) for a, b in zip(backend.positions(cond), bare_positions(backend, task, inputs))]


def bare_positions(backend, task, inputs: Sequence[Any]) -> list[int]:
    """Each input's positions with no prompt at all (no instruction, no demonstrations): the zero of
    `Applier.prompt_tokens`."""
    return backend.text_positions([render("", [], x, _labels_map(task)) for x in inputs])


def _prefixes(inputs, answer_prefixes) -> list[str]:
    return list(answer_prefixes) if answer_prefixes is not None else [""] * len(inputs)


def per_choice(chosen: Sequence[int], members: Sequence[Prompt], prefixes: Sequence[str] | None, call) -> list:
    """Inputs answered by the member each one chose (a selector's pick, a mixture's top member).

    chosen: each input's member index; `call(member, idx, prefixes_of_idx)` answers the inputs `idx` that chose
    `member` and returns one result per input. Returns the results back in input order.
    """
    out: list = [None] * len(chosen)
    for k in sorted(set(chosen)):
        idx = [i for i, c in enumerate(chosen) if c == k]
        part = call(members[k], idx, [prefixes[i] for i in idx] if prefixes is not None else None)
        for i, r in zip(idx, part):
            out[i] = r
    return out


def one_choice(chosen: Sequence[int], members: Sequence[Prompt], what: str) -> Prompt:
    """The one member every input chose (a request's inputs): its condition is theirs."""
    if len(set(chosen)) > 1:
        raise UnsupportedError(f"these inputs choose different {what} members; each is answered by its own "
                               "member: condition them one at a time")
    return members[chosen[0]] if chosen else members[0]


def rows_after(lm, rendered, start: Sequence[int], what: str) -> list[list[int]]:
    """Each rendered input's token ids after `start` (the chat header and the prompt's own slot).

    A token, soft or prefix prompt sits right after the chat header it was found or trained with; an
    input whose ids do not begin with that header (a request with its own system message) is refused.
    """
    rows = []
    for i, r in enumerate(rendered):
        ids = to_ids(lm, r)
        if ids[: len(start)] != start or len(ids) <= len(start):
            raise ConfigError(f"input {i}: {what} sits after the chat header it was made with; "
                              "a request with its own system message changes that header")
        rows.append(ids[len(start):])
    return rows


@applies(TextPrompt)
class TextApplier(Applier):
    """Instruction and fixed demonstrations, rendered by `promptlift.render`."""

    def condition(self, prompt, backend, task, inputs, answer_prefixes=None):
        labels = _labels_map(task)
        return backend.condition_text([render(prompt.instruction, prompt.demos, x, labels, a)
                                       for x, a in zip(inputs, _prefixes(inputs, answer_prefixes))])


@applies(KnnPrompt)
class KnnApplier(Applier):
    """Per input, its k nearest pool examples as demonstrations (least similar first, nearest last)."""

    def check(self, prompt, backend, task):
        if prompt.embedder == "model" and not backend.white_box:
            raise ConfigError("this kNN prompt picks demonstrations with the local model's own embeddings "
                              "(embedder=model), which an endpoint cannot compute; re-make it with "
                              "embedder=tfidf (few-shot -o selection=knn -o embedder=tfidf)")
        if not prompt.pool:
            raise ConfigError("a kNN prompt needs a non-empty demonstration pool")

    def select(self, prompt: KnnPrompt, backend, inputs) -> list[list]:
        from .neighbors import nearest, tfidf_embed

        queries = [query_text(x) for x in inputs]
        pool = [p.input for p in prompt.pool]
        if prompt.embedder == "model":
            pe, qe = backend.embed_texts(pool), backend.embed_texts(queries)
        else:
            pe, qe = tfidf_embed(pool, queries)
        return [[prompt.pool[j] for j in row] for row in nearest(qe, pe, prompt.k)]

    def condition(self, prompt, backend, task, inputs, answer_prefixes=None):
        labels = _labels_map(task)
        chosen = self.select(prompt, backend, inputs)
        return backend.condition_text([render(prompt.instruction, demos, x, labels, a) for x, demos, a
                                       in zip(inputs, chosen, _prefixes(inputs, answer_prefixes))])


TOKEN_SLOT = "x"  # a non-empty stand-in instruction: a token prompt's ids take its place


@applies(TokenPrompt)
class TokenApplier(Applier):
    """Token ids on the model they were found on; their text, as the instruction, anywhere else.

    On that model the sequence is [chat header][ids][demonstrations' turns, input, answer opening]:
    a text prompt's layout with the ids in place of the instruction's tokens, as the methods that
    found them scored them (`layout`). On another model or an endpoint `text` is rendered as a text
    prompt's instruction (`evaluate` notes that the prompt was found on another model).
    """

    @staticmethod
    def layout(lm, labels=None, body: Sequence[int] = (), demos: Sequence = ()):
        """The layout a token prompt follows on `lm`: a text prompt's, with `body` as the instruction's tokens.

        With `demos` the body goes on with their turns, exactly as `condition` lays them out.
        """
        plain = build_layout(lm, TOKEN_SLOT, [], labels)
        if not demos:
            return dataclasses.replace(plain, body=list(body))
        full = build_layout(lm, TOKEN_SLOT, demos, labels)
        if full.header != plain.header or full.body[: len(plain.body)] != plain.body:
            raise ConfigError(f"{lm.model_id}'s template does not put demonstrations after the instruction; "
                              "a token prompt cannot carry demonstrations on it")
        return dataclasses.replace(full, body=list(body) + full.body[len(plain.body):])

    def exact(self, prompt: TokenPrompt, backend) -> bool:
        """True if the ids apply as they are: a local model, the one the prompt was found on."""
        return bool(backend.white_box and prompt.model and same_model(prompt.model, backend.lm))

    def check(self, prompt, backend, task):
        if self.exact(prompt, backend) and prompt.ids and max(prompt.ids) >= backend.lm.embedding_matrix().shape[0]:
            raise ArtifactError(f"token prompt has id {max(prompt.ids)}, past the vocabulary of {backend.lm.model_id}")

    @torch.no_grad()
    def condition(self, prompt, backend, task, inputs, answer_prefixes=None):
        labels = _labels_map(task)
        prefixes = _prefixes(inputs, answer_prefixes)
        if not self.exact(prompt, backend):
            return backend.condition_text([render(prompt.text, prompt.demos, x, labels, a)
                                           for x, a in zip(inputs, prefixes)])
        lm = backend.lm
        slot = lm.encode(TOKEN_SLOT)
        lay = self.layout(lm, labels, slot, prompt.demos)
        shots = lay.body[len(slot):]  # the demonstrations' turns: constant, so they go in the cached head
        rendered = [render(TOKEN_SLOT, prompt.demos, x, labels, a) for x, a in zip(inputs, prefixes)]
        rows = rows_after(lm, rendered, lay.header + lay.body, "a token prompt")
        head = lay.header + list(prompt.ids) + shots
        kv = backend.constant_prefix(prompt, labels_key(labels), lambda: lm.forward(
            ids=torch.tensor([head], device=lm.device))[1] if head else None)
        return Cond(kv, rows, answer_sep(lm, rendered[0]) if rendered else "",
                    [] if lm.has_chat_template else ["\n"], head)


def calibrate(scores: torch.Tensor, cf_scores: torch.Tensor) -> torch.Tensor:
    """Contextual calibration: divide label probabilities by the mean content-free ones.

    scores: (N, L) log-probabilities; cf_scores: (M, L). Returns log p(l|x) - log p_cf(l),
    with p renormalised over the labels (W = diag(p_cf)^-1, b = 0 in Zhao et al. 2021).
    """
    p_cf = torch.softmax(cf_scores, dim=-1).mean(0)  # (L,)
    return torch.log_softmax(scores, dim=-1) - torch.log(p_cf)


@applies(Calibrated)
class CalibratedApplier(Applier):
    """Label scores of the inner prompt, calibrated by its scores on content-free inputs."""

    def check(self, prompt, backend, task):
        super().check(prompt, backend, task)
        if task is not None and not task.is_classification:
            raise ConfigError("calibration applies to classification tasks only")
        if not backend.can_score_labels:
            raise ConfigError(f"calibration needs label log-probabilities, and {backend.lm.model_id} returns none "
                              "(no logprobs on this endpoint); evaluate without calibration")

    def stages(self, prompt):
        return applier_for(prompt.inner).stages(prompt.inner)

    def generation_prompt(self, prompt):
        return applier_for(prompt.inner).generation_prompt(prompt.inner)

    def condition(self, prompt, backend, task, inputs, answer_prefixes=None):
        return applier_for(prompt.inner).condition(prompt.inner, backend, task, inputs, answer_prefixes)

    def label_scores(self, prompt, backend, task, inputs, answer_prefixes=None):
        inner = applier_for(prompt.inner)
        scores = inner.label_scores(prompt.inner, backend, task, inputs, answer_prefixes)
        cf_prefixes = None if answer_prefixes is None else [answer_prefixes[0]] * len(prompt.content_free)
        cf = inner.label_scores(prompt.inner, backend, task, list(prompt.content_free), cf_prefixes)
        return calibrate(scores, cf)

    def generate(self, prompt, backend, task, inputs, cfg, answer_prefixes=None):
        return applier_for(prompt.inner).generate(prompt.inner, backend, task, inputs, cfg, answer_prefixes)


def clean_answer(text: str) -> str:
    """The short answer read after the answer trigger: first line, without a final period."""
    return text.strip().split("\n")[0].strip().rstrip(".").strip()


@applies(Reasoning)
class ReasoningApplier(Applier):
    """Stages on the inner prompt: reasoning after the trigger (and after each follow-up trigger: least-to-most),
    then the answer after the answer trigger.

    Stage k's answer prefix is everything written so far, so every stage is a plain continuation:

        stage 1:  "{trigger}"
        stage 2:  "{trigger} {reasoning 1}\n{followup 1}"                       (least-to-most: solve)
        answer:   "{trigger} {reasoning 1}\n{followup 1} {reasoning 2}\n{answer_trigger}"
    """

    def reasons(self, prompt: Reasoning, backend, task, inputs, cfg: GenerationConfig) -> list[str]:
        """What each input's reasoning stages wrote after `trigger` (follow-up triggers included)."""
        inner = applier_for(prompt.inner)
        gen = GenerationConfig(max_tokens=prompt.reasoning_tokens, temperature=cfg.temperature, seed=cfg.seed)
        reasons = inner.generate(prompt.inner, backend, task, inputs, gen, [prompt.trigger] * len(inputs))
        for followup in prompt.followups:
            more = inner.generate(prompt.inner, backend, task, inputs, gen,
                                  [self.continued(prompt, r, followup) for r in reasons])
            reasons = [f"{r.strip()}\n{followup} {m.strip()}" for r, m in zip(reasons, more)]
        return reasons

    def stages(self, prompt):
        return (2 + len(prompt.followups)) * applier_for(prompt.inner).stages(prompt.inner)

    @staticmethod
    def continued(prompt: Reasoning, reasoning: str, next_trigger: str) -> str:
        """The answer so far, opening the next stage: the trigger, the reasoning, then `next_trigger`."""
        return f"{prompt.trigger} {reasoning.strip()}\n{next_trigger}"

    def second_stage(self, prompt: Reasoning, reasons: Sequence[str]) -> list[str]:
        """The answer stage's prefixes: the whole reasoning, then the answer trigger."""
        return [self.continued(prompt, r, prompt.answer_trigger) for r in reasons]

    def condition(self, prompt, backend, task, inputs, answer_prefixes=None):
        return applier_for(prompt.inner).condition(prompt.inner, backend, task, inputs, answer_prefixes)

    def answer_scores(self, prompt, backend, task, inputs, answers):
        raise UnsupportedError("a reasoning prompt answers after its own reasoning; scoring a given answer "
                               "without it would score another prompt")

    def label_scores(self, prompt, backend, task, inputs, answer_prefixes=None):
        reasons = self.reasons(prompt, backend, task, inputs, GenerationConfig())
        return applier_for(prompt.inner).label_scores(prompt.inner, backend, task, inputs,
                                                      self.second_stage(prompt, reasons))

    def generate(self, prompt, backend, task, inputs, cfg, answer_prefixes=None):
        reasons = self.reasons(prompt, backend, task, inputs, cfg)
        stage2 = GenerationConfig(max_tokens=cfg.max_tokens, stop=["\n"], temperature=cfg.temperature, seed=cfg.seed)
        answers = applier_for(prompt.inner).generate(prompt.inner, backend, task, inputs, stage2,
                                                     self.second_stage(prompt, reasons))
        return [clean_answer(a) for a in answers]
