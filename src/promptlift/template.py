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

from .render import Rendered, render
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


def to_text(lm, rendered: Rendered) -> str:
    """The text a local model reads for a rendered prompt: its chat template, or the plain format."""
    if not lm.has_chat_template:
        return rendered.plain_text()
    msgs = rendered.messages()
    if rendered.continues_answer:
        return lm.tokenizer.apply_chat_template(msgs, tokenize=False, continue_final_message=True)
    return lm.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def to_ids(lm, rendered: Rendered) -> list[int]:
    """Token ids of `to_text` (BOS added for plain models whose tokenizer uses one)."""
    return lm.encode(to_text(lm, rendered), bos=not lm.has_chat_template)


def answer_sep(lm, rendered: Rendered | None = None) -> str:
    """What separates the answer from the text before it: nothing right after a chat
    template's assistant opening, a space after "Output:" or after an answer prefix."""
    return " " if (not lm.has_chat_template or (rendered is not None and rendered.continues_answer)) else ""


def build_layout(lm, instruction: str, demos: Sequence[Example] = (), label_words=None) -> Layout:
    """Split the rendered prompt of `lm` into header / body / suffix token segments.

    The text comes from `render` (the same rendering the black-box path and the
    proxy use), with a sentinel in place of the input.
    """
    r = render(instruction, demos, _SENT, label_words)
    full = to_text(lm, r)
    before, after = full.split(_SENT)
    if lm.has_chat_template:
        bare = to_text(lm, render("", (), _SENT))
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
