"""The one rendering of a text prompt: (instruction, demonstrations, the user's input or messages) -> messages.

Every consumer uses it: the white-box engine (through the model's chat
template), the black-box path (messages sent to an endpoint) and the serving
proxy. It is pure: no model, no tokenizer, no I/O.

Where things go, precisely:

1. The caller's input is a string (one user message) or a list of chat
   messages `{"role": "system"|"developer"|"user"|"assistant", "content": ...}`.
2. The caller's leading system/developer messages stay first, unchanged.
3. Demonstrations become user/assistant turn pairs right after them, before
   the caller's conversation; a demonstration's answer is its label's words
   (classification) or its output.
4. The instruction is prepended, followed by a blank line ("{instruction}\\n\\n"),
   to the content of the first user turn after the system messages: the first
   demonstration's user turn, or the caller's first user message if there are
   no demonstrations. It is never a system message, so a model's default
   system prompt and the caller's own system message are kept.
5. An answer prefix (a chain-of-thought trigger, or a reasoning to continue)
   becomes a final assistant message that the model continues.

For models and endpoints without a chat template the same pieces render as
plain text (`Rendered.plain_text`):

    {system}\\n\\n{instruction}\\n\\nInput: {user}\\nOutput: {assistant}\\n\\n ... Input: {user}\\nOutput:[ {answer prefix}]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .errors import ConfigError
from .task import Example

ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class Rendered:
    """A prompt ready for a model: the caller's system messages, instruction, turns, answer prefix."""

    system: tuple = ()
    instruction: str = ""
    turns: tuple = ()  # (role, content) pairs: demonstrations, then the caller's conversation
    answer_prefix: str = ""

    def messages(self) -> list[dict]:
        """Chat messages; with an answer prefix the last one is a partial assistant message."""
        msgs = [{"role": r, "content": c} for r, c in self.system]
        lead = f"{self.instruction}\n\n" if self.instruction else ""
        for role, content in self.turns:
            if lead and role == "user":
                content, lead = lead + content, ""
            msgs.append({"role": role, "content": content})
        if self.answer_prefix:
            msgs.append({"role": "assistant", "content": self.answer_prefix})
        return msgs

    def plain_text(self) -> str:
        """The same prompt as plain text, for models without a chat template (ends after "Output:")."""
        parts = [f"{c}\n\n" for _, c in self.system if c]
        if self.instruction:
            parts.append(f"{self.instruction}\n\n")
        for i, (role, content) in enumerate(self.turns):
            if role == "user":
                parts.append(f"Input: {content}\nOutput:")
            else:
                parts.append(f" {content}\n\n")
        if self.answer_prefix:
            parts.append(f" {self.answer_prefix}")
        return "".join(parts)

    @property
    def continues_answer(self) -> bool:
        """True if the model continues a partial answer (an answer prefix is present)."""
        return bool(self.answer_prefix)


def answer_words(ex: Example, label_words: Mapping[str, str] | None) -> str:
    """What a demonstration answers: its label's words (classification) or its output."""
    return label_words[ex.output] if label_words and ex.output in label_words else ex.output


def normalize_messages(conversation: str | Sequence[Any], where: str = "messages") -> list[tuple[str, str]]:
    """(role, text) pairs of a caller's input; text content parts are joined. Bad shapes are ConfigError."""
    if isinstance(conversation, str):
        return [("user", conversation)]
    out = []
    for i, m in enumerate(conversation):
        if not isinstance(m, Mapping) or "role" not in m:
            raise ConfigError(f"{where}[{i}]: expected an object with 'role' and 'content'")
        role = m["role"]
        if role not in ROLES:
            raise ConfigError(f"{where}[{i}].role: expected one of {', '.join(ROLES)}, got {role!r}")
        content = m.get("content")
        if content is None:
            content = ""
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ConfigError(f"{where}[{i}].content[{j}]: only text parts are supported")
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise ConfigError(f"{where}[{i}].content: expected a string or a list of text parts")
        out.append((role, content))
    if not any(r == "user" for r, _ in out):
        raise ConfigError(f"{where}: needs at least one user message")
    return out


def from_messages(messages: Sequence[Any]) -> Rendered:
    """Chat messages as they are (no instruction, no demonstrations); a final assistant message is an
    answer prefix to continue. What `HFModel.generate` renders when it is handed raw messages."""
    pairs = normalize_messages(messages)
    n_sys = 0
    while n_sys < len(pairs) and pairs[n_sys][0] in ("system", "developer"):
        n_sys += 1
    turns = pairs[n_sys:]
    prefix = ""
    if turns and turns[-1][0] == "assistant":
        prefix = turns[-1][1]
        turns = turns[:-1]
    return Rendered(tuple(pairs[:n_sys]), "", tuple(turns), prefix)


def render(instruction: str, demos: Sequence[Example], conversation: str | Sequence[Any],
           label_words: Mapping[str, str] | None = None, answer_prefix: str = "") -> Rendered:
    """Render a text prompt for one input (a string or a list of chat messages); see the module docstring."""
    pairs = normalize_messages(conversation)
    n_sys = 0
    while n_sys < len(pairs) and pairs[n_sys][0] in ("system", "developer"):
        n_sys += 1
    turns: list[tuple[str, str]] = []
    for d in demos:
        turns += [("user", d.input), ("assistant", answer_words(d, label_words))]
    turns += pairs[n_sys:]
    return Rendered(tuple(pairs[:n_sys]), instruction, tuple(turns), answer_prefix)


__all__ = ["Rendered", "render", "from_messages", "normalize_messages", "answer_words", "ROLES"]
