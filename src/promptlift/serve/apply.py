"""How the proxy applies an artifact to a request bound for an HTTP upstream. Pure: no model, no I/O.

The rendering is the core's (`promptlift.render`), reached through the
artifact's own applier (`promptlift.engine.apply`), exactly as the engine's
black-box path reaches it; this module only records what the applier renders.
So, quoting `promptlift.render`:

- the caller's leading system/developer messages stay first, unchanged;
- demonstrations become user/assistant turn pairs right after them, before the
  caller's conversation (a demonstration answers with its label's words when
  the route gives `labels`, else with its stored output);
- the instruction, followed by a blank line, is prepended to the content of the
  first user turn after the system messages (the first demonstration's, or the
  caller's first user message): never a system message, so the caller's own
  system message and a model's default one are kept;
- `/v1/completions` sends the plain-text form of the same pieces:
  `{system}\\n\\n{instruction}\\n\\nInput: {user}\\nOutput: {assistant}\\n\\n ... Input: {prompt}\\nOutput:`
  where the caller's `prompt` is the input.

`KnnPrompt` (TF-IDF embedder) picks each request's demonstrations from its
pool by the request's last user message; `Calibrated` changes only label
scores, so generation goes to the prompt it wraps. Soft and prefix prompts
are vectors for one local model: they run on `--upstream local`, and soft
prompts also on vLLM with `prompt_embeds` (`serve.embeds`).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Mapping, Sequence

from ..artifacts import Calibrated, Prompt, SoftPrompt
from ..engine.apply import applier_for
from ..errors import ConfigError, UnsupportedError
from ..lm.base import GenerationConfig
from ..render import Rendered


class _RenderRecorder:
    """A text backend that runs nothing: it keeps the rendered prompts an applier asks it to answer.

    `can_score_labels` is True so that `Calibrated` passes its check: the proxy never scores.
    """

    white_box = False
    can_score_labels = True

    def __init__(self, where: str = "HTTP upstream"):
        self.lm = SimpleNamespace(model_id=where)
        self.calls: list[list[Rendered]] = []

    def condition_text(self, rendered: Sequence[Rendered]) -> list[Rendered]:
        return list(rendered)

    def generate(self, cond: list[Rendered], cfg: GenerationConfig) -> list[str]:
        self.calls.append(cond)
        return [""] * len(cond)

    def label_scores(self, cond, words):
        raise UnsupportedError("the proxy does not score labels")

    def embed_texts(self, texts):
        raise UnsupportedError("an HTTP upstream cannot embed inputs with the model itself")


def label_task(labels: Mapping[str, str] | None, name: str = "serve"):
    """A Task carrying only label words (what demonstrations answer with), or None."""
    if not labels:
        return None
    from ..task import Task

    return Task(name=name, kind="classification", labels=dict(labels))


def render_request(prompt: Prompt, conversation: str | Sequence[Any], task=None) -> Rendered:
    """The one rendering of `conversation` (a string or chat messages) under a text artifact.

    Raises ConfigError for what an HTTP upstream cannot take in one request (soft/prefix
    vectors, two-stage prompts) and for malformed messages.
    """
    rec = _RenderRecorder()
    ap = applier_for(prompt)
    ap.generate(prompt, rec, task, [conversation], GenerationConfig())
    if len(rec.calls) != 1 or len(rec.calls[0]) != 1:
        raise ConfigError(f"a {prompt.type} prompt answers in {len(rec.calls)} stages (it reads the model's first "
                          "answer before asking again); serve it with --upstream local")
    return rec.calls[0][0]


def chat_messages(prompt: Prompt, messages: Sequence[Any], task=None) -> list[dict]:
    """The messages to send upstream for a chat request's `messages`."""
    return render_request(prompt, messages, task).messages()


def completion_prompt(prompt: Prompt, text: str, task=None) -> str:
    """The plain-text prompt to send upstream for a completions request's `prompt`."""
    return render_request(prompt, text, task).plain_text()


def generation_prompt(prompt: Prompt) -> Prompt:
    """The artifact that decides what the model reads: `Calibrated` changes only scoring, so it is unwrapped.

    (The core could expose this per applier; see the serve report.)
    """
    while isinstance(prompt, Calibrated):
        prompt = prompt.inner
    return prompt


def embeds_prompt(prompt: Prompt) -> SoftPrompt | None:
    """The soft prompt to send as vLLM `prompt_embeds`, if that is what `prompt` is."""
    p = generation_prompt(prompt)
    return p if isinstance(p, SoftPrompt) else None


def check_http(prompt: Prompt, *, prompt_embeds: bool, where: str, task=None) -> None:
    """Refuse, at start-up, an artifact an HTTP upstream cannot apply (one-line ConfigError)."""
    if prompt.text_only:
        try:
            applier_for(prompt).check(prompt, _RenderRecorder(), task)
            render_request(prompt, "probe", task)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        return
    if prompt_embeds:
        if embeds_prompt(prompt) is not None:
            return
        raise ConfigError(f"{where}: a {generation_prompt(prompt).type} prompt cannot go to vLLM, which takes input "
                          "embeddings only (no per-layer key/value prefixes): serve it with --upstream local")
    raise ConfigError(f"{where}: a {generation_prompt(prompt).type} prompt is trained vectors for one local model "
                      "and an HTTP upstream takes text: serve it with --upstream local (or, for a soft prompt, "
                      "a vLLM upstream with --enable-prompt-embeds and prompt_embeds: true)")


__all__ = ["render_request", "chat_messages", "completion_prompt", "generation_prompt", "embeds_prompt",
           "check_http", "label_task"]
