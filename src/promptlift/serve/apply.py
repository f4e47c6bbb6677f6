"""How the proxy applies an artifact to a request bound for an HTTP upstream. Pure: no model, no I/O.

The rendering is the core's (`promptlift.render`), reached through the
artifact's own applier (`promptlift.engine.apply`): the proxy asks it for the
condition of the request on the engine's endpoint backend (`Endpoint`), which
is exactly what the black-box evaluation path sends; it never asks which kind
of artifact it holds.
So, quoting `promptlift.render`:

- the caller's leading system/developer messages stay first, unchanged;
- demonstrations become user/assistant turn pairs right after them, before the
  caller's conversation (a demonstration answers with its label's words: the
  route's `labels`, else those the artifact stores; without either, with its
  stored output);
- the instruction, followed by a blank line, is prepended to the content of the
  first user turn after the system messages (the first demonstration's, or the
  caller's first user message): never a system message, so the caller's own
  system message and a model's default one are kept;
- `/v1/completions` sends the plain-text form of the same pieces:
  `{system}\\n\\n{instruction}\\n\\nInput: {user}\\nOutput: {assistant}\\n\\n ... Input: {prompt}\\nOutput:`
  where the caller's `prompt` is the input.

`KnnPrompt` (TF-IDF embedder) picks each request's demonstrations from its
pool by the request's last user message; `Calibrated` changes only label
scores, so generation goes to the prompt it wraps (its applier's condition).
Prompts that answer in several stages (`Reasoning`: `Applier.stages`) are
refused for HTTP upstreams and run on `--upstream local`. Soft and prefix prompts
are vectors for one local model: they run on `--upstream local`, and soft
prompts also on vLLM with `prompt_embeds` (`serve.embeds`).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Mapping, Sequence

from ..artifacts import Prompt, SoftPrompt
from ..engine.apply import applier_for
from ..engine.backends import Endpoint
from ..errors import ConfigError
from ..render import Rendered


def _upstream_backend(where: str = "HTTP upstream") -> Endpoint:
    """The engine's endpoint backend for a chat upstream that runs nothing: the proxy takes its conditions.

    Its model says it returns log-probabilities so that `Calibrated` passes its check (the proxy never scores).
    """
    lm = SimpleNamespace(model_id=where, api="chat", capabilities=lambda: {"logprobs": True})
    return Endpoint(lm)


def label_task(labels: Mapping[str, str] | None, name: str = "serve"):
    """A Task carrying only label words (what demonstrations answer with), or None."""
    if not labels:
        return None
    from ..task import Task

    return Task(name=name, kind="classification", labels=dict(labels))


def check_one_stage(prompt: Prompt) -> None:
    """Refuse a prompt that answers in several model calls (it reads the model's first answer before asking again)."""
    n = applier_for(prompt).stages(prompt)
    if n != 1:
        raise ConfigError(f"a {prompt.type} prompt answers in {n} stages (it reads the model's first answer before "
                          "asking again); serve it with --upstream local")


def render_request(prompt: Prompt, conversation: str | Sequence[Any], task=None) -> Rendered:
    """The one rendering of `conversation` (a string or chat messages) under a text artifact.

    It is the condition the artifact's applier gives the engine's endpoint backend, i.e.
    exactly what `promptlift eval --model openai:...` sends. Raises ConfigError for what an
    HTTP upstream cannot take in one request (soft/prefix vectors, two-stage prompts) and
    for malformed messages.
    """
    check_one_stage(prompt)
    cond = applier_for(prompt).condition(prompt, _upstream_backend(), task, [conversation])
    return cond.rendered[0]


def estimated_prompt_positions(prompt: Prompt, conversations: Sequence[Any], task=None) -> float:
    """The positions `prompt` puts before these inputs on an HTTP upstream, summed: `Applier.prompt_tokens` on the
    endpoint backend, i.e. estimated from characters (`Endpoint.positions_unit`): there is no tokenizer here."""
    return float(sum(applier_for(prompt).prompt_tokens(prompt, _upstream_backend(), task, list(conversations))))


def chat_messages(prompt: Prompt, messages: Sequence[Any], task=None) -> list[dict]:
    """The messages to send upstream for a chat request's `messages`."""
    return render_request(prompt, messages, task).messages()


def completion_prompt(prompt: Prompt, text: str, task=None) -> str:
    """The plain-text prompt to send upstream for a completions request's `prompt`."""
    return render_request(prompt, text, task).plain_text()


SCORE_INPUT, SCORE_OUTPUT = "Input: ", "\nOutput:"


def scoring_input(text: str) -> tuple[str, str, int]:
    """(input, answer, where the answer starts in `text`) of a completions prompt to score.

    A black-box client that scores label words sends the plain-text rendering of one input
    without instruction (`promptlift.render`: `Input: {input}\nOutput:`) followed by
    " {answer}"; the proxy renders {input} through the route's prompt and scores {answer}
    as the model's answer to it. Any other text is all input: (text, "", len(text)).
    """
    if not text.startswith(SCORE_INPUT) or SCORE_OUTPUT not in text:
        return text, "", len(text)
    i = text.rindex(SCORE_OUTPUT)
    rest = text[i + len(SCORE_OUTPUT):]
    answer = rest[1:] if rest.startswith(" ") else rest
    return text[len(SCORE_INPUT): i], answer, i + len(SCORE_OUTPUT)


def generation_prompt(prompt: Prompt) -> Prompt:
    """The artifact that decides what the model reads, as its applier says (calibration changes only scores)."""
    return applier_for(prompt).generation_prompt(prompt)


def embeds_prompt(prompt: Prompt) -> SoftPrompt | None:
    """The soft prompt to send as vLLM `prompt_embeds`, if that is what `prompt` generates from."""
    p = generation_prompt(prompt)
    return p if isinstance(p, SoftPrompt) else None


def check_http(prompt: Prompt, *, prompt_embeds: bool, where: str, task=None) -> None:
    """Refuse, at start-up, an artifact an HTTP upstream cannot apply (one-line ConfigError)."""
    if prompt.text_only:
        try:
            applier_for(prompt).check(prompt, _upstream_backend(), task)
            render_request(prompt, "probe", task)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        return
    if prompt_embeds:
        if embeds_prompt(prompt) is not None:
            return
        raise ConfigError(f"{where}: a {generation_prompt(prompt).type} prompt cannot go to vLLM, which takes input "
                          "embeddings only (no per-layer key/value prefixes): serve it with --upstream local, or "
                          "distill it into a soft prompt first (promptlift distill RUN --out RUN2)")
    raise ConfigError(f"{where}: a {generation_prompt(prompt).type} prompt is trained vectors for one local model "
                      "and an HTTP upstream takes text: serve it with --upstream local (or, for a soft prompt, "
                      "a vLLM upstream with --enable-prompt-embeds and prompt_embeds: true)")


__all__ = ["render_request", "chat_messages", "completion_prompt", "generation_prompt", "embeds_prompt",
           "check_http", "check_one_stage", "label_task", "scoring_input"]
