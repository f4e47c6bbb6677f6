"""Where the instruction, demonstrations, soft tokens and the input go.

A prompt is laid out as token segments:

    [header] [soft slot] [body] [example] [answer]

- header: the constant start of the chat template (system turn, opening of the
  user turn); empty (or BOS) for models without a chat template.
- soft slot: where soft prompts insert their vectors (default: after the header,
  so the header's key/value cache is computed once per run). "prepend" puts
  them before the header instead.
- body: instruction and demonstrations: constant across examples.
- example: the input, then the end of the user turn and the opening of the
  assistant turn (`suffix`). Per example.
- answer: label words (classification) or the reference (generation).

Chat models see demonstrations as earlier user/assistant turns and the
instruction at the start of the first user turn. Plain models see
"Input: ...\nOutput: ..." blocks. Segments are tokenized separately and
concatenated; the evaluation engine caches [header][soft][body] once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .task import Example

_SENT = "\u241fPROMPTLIFT_INPUT\u241f"


@dataclass
class Layout:
    """Token segments of a prompt for one model (see module docstring)."""

    header: list[int]
    body: list[int]
    suffix: list[int]
    chat: bool
    end_of_answer: list[int]  # tokens that close an answer (end of turn / newline)
    lm: object = None
    instruction: str = ""
    lead: str = ""  # text before each input, tokenized together with it ("\n\nInput: " for plain models)

    def example(self, text: str) -> list[int]:
        """Per-example tokens: the input then the opening of the answer."""
        return self.lm.encode(self.lead + text) + self.suffix

    def answer(self, words: str, *, close: bool = False) -> list[int]:
        """Tokens of an answer; `close=True` appends the end-of-answer token (generation targets)."""
        ids = self.lm.encode(words if self.chat else " " + words)
        return ids + (self.end_of_answer if close else [])

    def with_demos(self, demos: Sequence[Example], label_words=None) -> "Layout":
        """The same prompt with these demonstrations (per-example demonstrations; same header)."""
        return build_layout(self.lm, self.instruction, demos, label_words)

    @property
    def stop(self) -> list[str]:
        """Stop strings for generation after this layout's answer opening."""
        return [] if self.chat else ["\n"]


def _demo_answer(ex: Example, label_words) -> str:
    return label_words[ex.output] if label_words and ex.output in label_words else ex.output


def render_chat_text(lm, instruction: str, demos: Sequence[Example], x: str, label_words=None) -> str:
    """The full chat-template text of one prompt, up to the opening of the answer."""
    msgs = messages(instruction, demos, x, label_words)
    return lm.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def render_plain_text(instruction: str, demos: Sequence[Example], x: str, label_words=None) -> str:
    parts = [f"{instruction}\n\n"] if instruction else []
    for d in demos:
        parts.append(f"Input: {d.input}\nOutput: {_demo_answer(d, label_words)}\n\n")
    parts.append(f"Input: {x}\nOutput:")
    return "".join(parts)


def messages(instruction: str, demos: Sequence[Example], x: str, label_words=None) -> list[dict]:
    """The same prompt as chat messages (for black-box endpoints)."""
    msgs = []
    lead = f"{instruction}\n\n" if instruction else ""
    for i, d in enumerate(demos):
        msgs.append({"role": "user", "content": (lead if i == 0 else "") + d.input})
        msgs.append({"role": "assistant", "content": _demo_answer(d, label_words)})
    msgs.append({"role": "user", "content": ("" if demos else lead) + x})
    return msgs


def build_layout(lm, instruction: str, demos: Sequence[Example] = (), label_words=None) -> Layout:
    """Split the rendered prompt of `lm` into header / body / suffix token segments."""
    if lm.has_chat_template:
        full = render_chat_text(lm, instruction, demos, _SENT, label_words)
        before, after = full.split(_SENT)
        bare = lm.tokenizer.apply_chat_template([{"role": "user", "content": _SENT}], tokenize=False,
                                                add_generation_prompt=True)
        header_text = bare.split(_SENT)[0]
        if not before.startswith(header_text):
            header_text = ""
        body_text = before[len(header_text):]
        body_text, lead = _split_trailing_space(body_text)
        header = lm.encode(header_text)
        body = lm.encode(body_text) if body_text else []
        suffix = lm.encode(after)
        eot = [i for i in lm.encode(after.split("\n")[0]) if i in lm.eos_ids][:1] or sorted(lm.eos_ids)[:1]
        return Layout(header, body, suffix, True, eot, lm, instruction, lead)
    full = render_plain_text(instruction, demos, _SENT, label_words)
    before, after = full.split(_SENT)
    # "Input: " belongs to the example segment, so the body ends at a block boundary
    cut = before.rfind("Input: ")
    body_text, lead = _split_trailing_space(before[:cut])
    header = lm.encode("", bos=True)
    body = lm.encode(body_text) if body_text else []
    suffix = lm.encode(after)
    return Layout(header, body, suffix, False, lm.encode("\n"), lm, instruction, lead + before[cut:])


def _split_trailing_space(text: str) -> tuple[str, str]:
    """Move trailing whitespace of a constant segment into the next one.

    Tokenizers merge a whitespace run with what follows it ("\n\nno" is not
    "\n\n" + "no"), so segments end before whitespace: then the concatenated
    segment tokens equal the tokenization of the full text.
    """
    stripped = text.rstrip()
    return stripped, text[len(stripped):]
