"""What more than one family of methods uses, so that no family imports another.

- demonstrations: `balanced_sample` (few-shot, calibrated, the LLM optimizers' demo sets);
- the start of a prompt in token space: `INITS`, `init_token_ids`, `init_kv` (soft prompts, BBT, BBTv2);
- the soft-prompt options (`StudentOptions`: the trainer's and the prompt's shape, extended by `SoftConfig`
  for prompt tuning and the methods built on it, such as `project`, and by `distill`);
- token prompts (token search and black-box methods): the options (`TokenOptions`), the vocabulary a
  search may use (`allowed_tokens`, `train_vocab`), the starting tokens (`start_ids`), the fixed part
  after the searched tokens (`Fixed`, `instruction_choices`, `FixedInstruction`) and the artifact
  (`token_prompt`).

Every token-prompt method ends with a `TokenPrompt`: the found tokens, then the
instruction's tokens (if any), placed where a text prompt's instruction goes
(`TokenApplier.layout`), so the ids score on their model exactly as they were
found and read as text anywhere else.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..artifacts import POSITIONS, TokenPrompt
from ..engine.apply import label_words, query_text
from ..engine.train import TrainConfig, check_loss, loss_option
from ..errors import ConfigError
from ..lm.base import model_key
from ..task import Example, Task

INITS = ("random", "text", "labels")


VOCABS = ("readable", "all")


INSTRUCTION_HELP = ("fixed instruction after the searched tokens; '' = task's, 'none' = no text, 'demos' = the "
                    "task's with `demos` random training examples after it, 'auto' = whichever of the task's, none "
                    "and (demos > 0) demos scores best on dev after the starting tokens (ties: the reference answers' "
                    "log-probability, then that order)")


def balanced_sample(task: Task, k: int, rng: random.Random, split: str = "train") -> list[Example]:
    """k examples of `split`, as balanced across labels as k allows, in random order."""
    pool = list(task.split(split))
    if k > len(pool):
        raise ConfigError(f"shots={k} but the {split} split has only {len(pool)} examples")
    if not task.is_classification:
        return rng.sample(pool, k)
    by_label: dict[str, list[Example]] = {lab: [] for lab in task.labels}
    for ex in pool:
        by_label[ex.output].append(ex)
    for exs in by_label.values():
        rng.shuffle(exs)
    labels = [lab for lab in task.labels if by_label[lab]]
    rng.shuffle(labels)
    chosen: list[Example] = []
    i = 0
    while len(chosen) < k:
        lab = labels[i % len(labels)]
        if by_label[lab]:
            chosen.append(by_label[lab].pop())
        i += 1
    rng.shuffle(chosen)
    return chosen


@dataclass
class StudentOptions(TrainConfig):
    """The trainer's options and the trained prompt's shape: what every soft-prompt trainee shares."""

    allowed_positions: ClassVar[tuple[str, ...]] = POSITIONS

    tokens: int = field(default=20, metadata={"help": "number of virtual tokens k"})
    init: str = field(default="text", metadata={"help": "text (instruction tokens) | random (vocabulary) | labels"})
    position: str = field(default="after_header", metadata={"help": "after_header | prepend"})
    instruction: str = field(default="", metadata={"help": "instruction after the soft tokens; '' = task's, 'none' = no text"})

    def __post_init__(self):
        super().__post_init__()
        if self.tokens < 1:
            raise ValueError("tokens must be >= 1")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.position not in self.allowed_positions:
            raise ValueError(f"position must be one of {', '.join(p for p in self.allowed_positions if p)}, "
                             f"got {self.position!r}")


@dataclass
class SoftConfig(StudentOptions):
    """Options of a soft-prompt method trained on the task's gold outputs."""

    loss: str = loss_option()

    def __post_init__(self):
        super().__post_init__()
        check_loss(self.loss)


def init_token_ids(lm, task, how: str, k: int, rng: random.Random, instruction: str) -> list[int]:
    """k token ids to initialise soft vectors from (Lester et al. 2021, section 3.2).

    random: tokens sampled from the 5000 lowest ids (frequent merges in BPE vocabularies);
    text: the instruction's tokens, repeated to length k;
    labels: the label words' tokens, then random tokens.
    """
    vocab = lm.embedding_matrix().shape[0]
    special = set(lm.tokenizer.all_special_ids)
    pool = [i for i in range(min(vocab, 5000)) if i not in special]
    randoms = [rng.choice(pool) for _ in range(k)]
    if how == "random":
        return randoms
    if how == "text":
        ids = lm.encode(instruction or task.instruction)
        if not ids:
            raise ConfigError("init=text needs a non-empty instruction")
        return (ids * (k // len(ids) + 1))[:k]
    ids = [t for words in task.labels.values() for t in lm.encode(words)] if task.is_classification else []
    if not ids:
        ids = [t for ex in task.train[:8] for t in lm.encode(ex.output)]
    return (ids + randoms)[:k]


def init_kv(lm, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values the model computes for `ids`: each (layers, kv_heads, k, head_dim)."""
    with torch.no_grad():
        _, kv = lm.forward(ids=torch.tensor([ids], device=lm.device))
    return torch.stack([k[0] for k in kv.keys]), torch.stack([v[0] for v in kv.values])


@dataclass
class TokenOptions:
    """Options every token-search method has: how many tokens, where they start, what they may be."""

    tokens: int = field(default=5, metadata={"help": "number of prompt tokens searched"})
    init: str = field(default="text", metadata={
        "help": "starting tokens: text (the instruction's, repeated) | random (readable vocabulary) | labels"})
    instruction: str = field(default="", metadata={"help": INSTRUCTION_HELP})
    demos: int = field(default=4, metadata={
        "help": "training examples kept after the instruction by instruction=demos (and tried by auto); 0 = none"})
    vocab: str = field(default="readable", metadata={
        "help": "tokens allowed: readable (printable ASCII, not special) | all (any non-special token)"})

    def __post_init__(self):
        if self.tokens < 1:
            raise ValueError("tokens must be >= 1")
        if self.demos < 0:
            raise ValueError("demos must be >= 0")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.vocab not in VOCABS:
            raise ValueError(f"vocab must be one of {', '.join(VOCABS)}, got {self.vocab!r}")


def fixed_instruction(option: str, task) -> str:
    """The fixed instruction: the option's text, the task's ('', 'auto' or 'demos' option) or none ('none').

    With 'auto' this is the first of `instruction_choices`: the one the starting tokens are drawn from.
    """
    return "" if option == "none" else (task.instruction if option in ("", "auto", "demos") else option)


@dataclass
class Fixed:
    """What follows the searched tokens: an instruction's text and demonstrations (earlier turns)."""

    instruction: str = ""
    demos: list = field(default_factory=list)

    def ids(self, lm) -> list[int]:
        """The instruction's tokens on `lm` (none for an empty instruction)."""
        return lm.encode(self.instruction) if self.instruction else []

    @property
    def label(self) -> str:
        """How a run's record names this choice."""
        text = self.instruction or "none"
        return f"{text} + {len(self.demos)} demos" if self.demos else text


def training_demos(task, k: int, seed: int) -> list:
    """`k` training examples drawn with their own generator (seeded), so no other draw of a run moves."""
    return random.Random(seed).sample(list(task.train), min(k, len(task.train)))


def instruction_choices(option: str, task, demos: int = 0, seed: int = 0) -> list[Fixed]:
    """What a run may keep after its tokens: `fixed_instruction(option)`, or for 'auto' the task's, none,
    and the task's with `demos` training examples (when demos > 0 and the task has training examples).

    A small model can be hurt by an instruction (SmolLM2-135M on SST-2's dev set: 50.0 % with the
    task's, 65.6 % with none), and on a generation task it answers in the task's format only once it
    sees examples (singular_to_plural's dev: 0 % with the instruction alone, 47-56 % with 4 examples,
    in the LLM-optimizer bench), so 'auto' scores each choice on dev after the starting tokens and
    keeps the best (`FixedInstruction`, `best_body`).
    """
    shots = training_demos(task, demos, seed) if demos and task.train else []
    if option == "auto":
        out = [Fixed(task.instruction)]
        if task.instruction:
            out.append(Fixed(""))
        if shots:
            out.append(Fixed(task.instruction, shots))
        return out
    if option == "demos":
        return [Fixed(task.instruction, shots)]
    return [Fixed(fixed_instruction(option, task))]


class FixedInstruction:
    """The fixed part (`self.body` tokens and `self.demos`) after the tokens of a search on the shared loop.

    With one choice it is fixed from the start. With `instruction=auto` every choice is a starting
    prompt (`starts`); the loop scores them on dev and `keep_body`, called from `update`, keeps the
    best one's index in `state.data["fixed"]` (best first, so ties keep the earlier choice), where
    `use_body`, called from `propose`, reads it back (also after a resume). `on_body` is called
    when the choice changes, for what a method derives from it.
    """

    def set_instructions(self, lm, task, option: str, demos: int = 0, seed: int = 0) -> str:
        """Set the choices and the first one; return the first instruction (the starting tokens' text)."""
        self.fixed = instruction_choices(option, task, demos, seed)
        self.bodies = [f.ids(lm) for f in self.fixed]
        self.choice = 0
        self.body, self.demos = list(self.bodies[0]), list(self.fixed[0].demos)
        return self.fixed[0].instruction

    def starts(self, found: list[int]) -> list[TokenPrompt]:
        """The starting prompts: `found` before each fixed choice."""
        return [token_prompt(self.lm, found, b, demos=f.demos) for b, f in zip(self.bodies, self.fixed)]

    def keep_body(self, state, scored) -> None:
        """After the starts are scored (`scored` best first): keep the best start's choice, once."""
        if "fixed" not in state.data:
            best = 0
            if scored:
                p = scored[0].prompt
                body = list(p.ids[self.config.tokens:])
                best = next((i for i, (b, f) in enumerate(zip(self.bodies, self.fixed))
                             if b == body and f.demos == list(p.demos)), 0)
            state.data["fixed"] = best
        self.use_body(state)

    def use_body(self, state) -> None:
        i = int(state.data.get("fixed", self.choice))
        if i != self.choice:
            self.choice = i
            self.body, self.demos = list(self.bodies[i]), list(self.fixed[i].demos)
            self.on_body()

    def on_body(self) -> None:
        """What depends on the fixed part is rebuilt here (nothing by default)."""

    def extra_start_calls(self, state) -> int:
        """Target calls the extra starts cost (for `estimate`)."""
        return (len(self.bodies) - 1) * len(state.dev)


def vocab_size(lm) -> int:
    """Rows of the embedding matrix (may exceed the tokenizer's ids: padded rows are never allowed)."""
    return lm.embedding_matrix().shape[0]


def allowed_tokens(lm, vocab: str = "readable") -> torch.Tensor:
    """(V,) bool on lm.device: the ids a search may use.

    Never special tokens (the tokenizer's named ones and every added token marked special, such as
    SmolLM2's `<file_sep>`, which a server reading the prompt as text would take as a control token)
    nor padded embedding rows; "readable" also drops tokens whose text is
    not printable ASCII (byte pieces of multi-byte characters, control characters), which keeps
    prompts legible and decodable to the same ids more often.
    """
    V = vocab_size(lm)
    n = min(V, len(lm.tokenizer))
    ok = torch.zeros(V, dtype=torch.bool)
    ok[:n] = True
    added = getattr(lm.tokenizer, "added_tokens_decoder", {})  # control tokens not among the named special ones
    special = set(lm.tokenizer.all_special_ids) | {i for i, t in added.items() if getattr(t, "special", False)}
    ok[[i for i in special if i < V]] = False
    if vocab == "readable":
        texts = lm.tokenizer.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
        for i, t in enumerate(texts):
            if not t.strip() or not t.isascii() or not t.isprintable():
                ok[i] = False
    if not ok.any():
        raise ConfigError(f"no token of {lm.model_id}'s vocabulary is allowed (vocab={vocab})")
    return ok.to(lm.device)


def train_vocab(lm, task, allowed: torch.Tensor, n: int, instruction: str = "") -> list[int]:
    """The `n` allowed ids that occur most often in the training inputs, the instruction and the label words.

    The vocabulary subset a distribution or policy over tokens samples from (BDPL's pre-selected
    candidate set; RLPrompt's action space). Ranked by count, ties by first appearance; ids are
    the ones the texts encode to (word-initial pieces keep their leading space). n = 0: every
    allowed id (the counted ones first); n > 0 may give fewer than n ids (a small task's texts).
    Raises ConfigError when n > 0 and no text gives an allowed id.
    """
    ok = allowed.tolist()
    texts = [query_text(ex.input) for ex in task.train] + [instruction]
    if task.is_classification:
        texts += label_words(task)
    counts: Counter = Counter()
    for t in texts:
        counts.update(i for i in lm.encode(t) if i < len(ok) and ok[i])
    ranked = [i for i, _ in counts.most_common()]  # most_common keeps first-seen order among ties
    if not n:
        seen = set(ranked)
        return ranked + [i for i in range(len(ok)) if ok[i] and i not in seen]
    if not ranked:
        raise ConfigError("no allowed token occurs in the training inputs; use pool=0 (every allowed token)")
    return ranked[:n]


def start_ids(lm, task, how: str, k: int, rng: random.Random, instruction: str, allowed: torch.Tensor) -> list[int]:
    """k starting token ids (see `TokenOptions.init`); disallowed ones are replaced by random allowed ones."""
    pool = allowed.nonzero().flatten().tolist()
    if how == "random":
        return [rng.choice(pool) for _ in range(k)]
    ids = init_token_ids(lm, task, how, k, rng, instruction)
    ok = allowed.tolist()
    return [i if i < len(ok) and ok[i] else rng.choice(pool) for i in ids]


def token_text(lm, ids: list[int]) -> str:
    """The text of `ids`, character for character (no clean-up of spaces)."""
    return lm.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def token_prompt(lm, found: list[int], body: list[int], demos=(), **meta) -> TokenPrompt:
    """The artifact of `found` tokens followed by the fixed instruction tokens `body`, then `demos`.

    meta["reencodes"]: whether the text encodes back to exactly these ids (so a text
    consumer of the same model reads the same tokens); meta["tokens"]: how many were searched.
    """
    ids = [int(i) for i in found] + list(body)
    text = token_text(lm, ids)
    return TokenPrompt(ids=ids, text=text, demos=list(demos), model=model_key(lm),
                       meta={"tokens": len(found), "reencodes": lm.encode(text) == ids, **meta})
