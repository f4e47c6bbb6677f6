"""What the token-search methods share: the vocabulary they search, nearest tokens, and the artifact.

Every method here ends with a `TokenPrompt`: the found tokens, then the
instruction's tokens (if any), placed where a text prompt's instruction goes
(`TokenApplier.layout`), so the ids score on their model exactly as they were
found and read as text anywhere else.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ...artifacts import TokenPrompt
from ...engine.search import TIEBREAK, search
from ...engine.soft import soft_prefix_kv
from ...errors import BudgetExceeded, ConfigError
from ...lm.base import model_key
from ..soft.common import INITS, init_token_ids

METRICS = ("cosine", "l2")
VOCABS = ("readable", "all")
INSTRUCTION_HELP = ("fixed instruction after the searched tokens; '' = task's, 'none' = no text, 'demos' = the "
                    "task's with `demos` random training examples after it, 'auto' = whichever of the task's, none "
                    "and (demos > 0) demos scores best on dev after the starting tokens (ties: the reference answers' "
                    "log-probability, then that order)")


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


def instruction_of(option: str, task) -> str:
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
    """What a run may keep after its tokens: `instruction_of(option)`, or for 'auto' the task's, none,
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
    return [Fixed(instruction_of(option, task))]


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


def best_on_dev(lm, task, prompts: list, results: list) -> int:
    """Index of the best of `prompts` given their dev `results` (`EvalResult`s), ties broken as the
    search loop breaks them: by the higher log-probability of the reference answers, on classification
    the gold label's over all of dev (free with the label scores), on a generation task on the first
    `TIEBREAK` dev rows (one more target call each). Other ties, and ties where the target gives no
    such value, go to the first."""
    from ...engine.evaluate import gold_label_logprob, reference_logprob

    scores = [r.accuracy for r in results]
    best = max(range(len(prompts)), key=lambda i: (scores[i], -i))
    tied = [i for i in range(len(prompts)) if scores[i] == scores[best]]
    if len(tied) > 1:
        if task.is_classification:
            ties = [_mean([gold_label_logprob(task, rec) for rec in results[i].predictions]) for i in tied]
        else:
            ties = [reference_logprob(lm, task, prompts[i], task.dev[:TIEBREAK]) for i in tied]
        if None not in ties:
            best = tied[max(range(len(tied)), key=lambda j: (ties[j], -j))]
    return best


def best_body(lm, task, found: list[int], choices: list[Fixed], ctx) -> tuple[list[int], list]:
    """The fixed part (instruction tokens, demos) of the best start on dev, for a method that trains.

    Each of `choices` after the starting tokens `found` is scored on dev through the engine; ties
    as `best_on_dev` breaks them. One choice, no dev set, or a budget that runs out: the first.
    """
    from ...engine.evaluate import evaluate

    bodies = [f.ids(lm) for f in choices]
    if len(bodies) == 1 or not task.dev:
        return bodies[0], list(choices[0].demos)
    prompts = [token_prompt(lm, found, b, demos=f.demos) for b, f in zip(bodies, choices)]
    try:
        results = [evaluate(lm, task, p, split="dev", progress=False) for p in prompts]
    except BudgetExceeded as e:
        print(f"promptlift: {e}; keeping the task's instruction", file=sys.stderr)
        return bodies[0], list(choices[0].demos)
    best = best_on_dev(lm, task, prompts, results)
    ctx.record(event="instruction", dev={f.label: r.accuracy for f, r in zip(choices, results)},
               kept=choices[best].label)
    return bodies[best], list(choices[best].demos)


def _mean(values: list) -> float | None:
    """The mean, or None if any value is missing."""
    return None if not values or None in values else sum(values) / len(values)


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


@torch.no_grad()
def vocab_embeddings(lm) -> torch.Tensor:
    """(V, hidden) float32: every token's input embedding, as the model scales it (`lm.embed`)."""
    return lm.embed(torch.arange(vocab_size(lm), device=lm.device)).float()


def similarity(vectors: torch.Tensor, table: torch.Tensor, metric: str) -> torch.Tensor:
    """(k, V) how near each of `vectors` (k, hidden) is to each row of `table` (V, hidden); higher = nearer.

    cosine: cosine similarity. l2: minus the Euclidean distance, divided by the vector's norm
    (scale-free, so it can be added to other scores).
    """
    v, t = vectors.float(), table.float()
    if metric == "cosine":
        return F.normalize(v, dim=-1) @ F.normalize(t, dim=-1).T
    if metric == "l2":
        return -torch.cdist(v, t) / v.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")


def nearest_tokens(vectors: torch.Tensor, table: torch.Tensor, allowed: torch.Tensor, metric: str) -> torch.Tensor:
    """(k,) the allowed token nearest to each of `vectors` (k, hidden)."""
    sim = similarity(vectors, table, metric).masked_fill(~allowed, float("-inf"))  # (k, V)
    return sim.argmax(-1)


def start_ids(lm, task, how: str, k: int, rng: random.Random, instruction: str, allowed: torch.Tensor) -> list[int]:
    """k starting token ids (see `TokenOptions.init`); disallowed ones are replaced by random allowed ones."""
    pool = allowed.nonzero().flatten().tolist()
    if how == "random":
        return [rng.choice(pool) for _ in range(k)]
    ids = init_token_ids(lm, task, how, k, rng, instruction)
    ok = allowed.tolist()
    return [i if i < len(ok) and ok[i] else rng.choice(pool) for i in ids]


def decode(lm, ids: list[int]) -> str:
    """The text of `ids`, character for character (no clean-up of spaces)."""
    return lm.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def token_prompt(lm, found: list[int], body: list[int], demos=(), **meta) -> TokenPrompt:
    """The artifact of `found` tokens followed by the fixed instruction tokens `body`, then `demos`.

    meta["reencodes"]: whether the text encodes back to exactly these ids (so a text
    consumer of the same model reads the same tokens); meta["tokens"]: how many were searched.
    """
    ids = [int(i) for i in found] + list(body)
    text = decode(lm, ids)
    return TokenPrompt(ids=ids, text=text, demos=list(demos), model=model_key(lm),
                       meta={"tokens": len(found), "reencodes": lm.encode(text) == ids, **meta})


def run_search(method, lm, task, ctx):
    """`engine.search` for a method of this package.

    The checkpoint folder is made first: the loop writes its checkpoint there when the budget
    stops the starting prompt's evaluation, before its first step would have made the folder.
    """
    if ctx.run_dir is not None:
        (Path(ctx.run_dir) / "checkpoint").mkdir(parents=True, exist_ok=True)
    return search(method, lm, task, ctx)


__all__ = ["TokenOptions", "METRICS", "VOCABS", "INSTRUCTION_HELP", "instruction_choices", "Fixed", "training_demos", "FixedInstruction", "best_body", "allowed_tokens", "vocab_embeddings", "similarity", "nearest_tokens",
           "start_ids", "token_prompt", "decode", "instruction_of", "run_search"]


def train_vocab(lm, task, allowed: torch.Tensor, n: int, instruction: str = "") -> list[int]:
    """The `n` allowed ids that occur most often in the training inputs, the instruction and the label words.

    The vocabulary subset a distribution or policy over tokens samples from (BDPL's pre-selected
    candidate set; RLPrompt's action space). Ranked by count, ties by first appearance; ids are
    the ones the texts encode to (word-initial pieces keep their leading space). n = 0: every
    allowed id (the counted ones first); n > 0 may give fewer than n ids (a small task's texts).
    Raises ConfigError when n > 0 and no text gives an allowed id.
    """
    from collections import Counter

    from ...engine.apply import label_words, query_text

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


__all__ += ["train_vocab"]


def hotflip(grad: torch.Tensor, table: torch.Tensor, allowed: torch.Tensor, current: int, k: int) -> list[int]:
    """The `k` allowed token ids whose swap into one prompt position most lowers the loss, to first order.

    HotFlip (Ebrahimi et al. 2018), as AutoPrompt ranks swaps: grad (hidden,) is the loss's gradient at
    the position's input embedding, table (V, hidden) every token's embedding; token w gains -grad · e_w.
    The current token is never returned.
    """
    gain = -(table @ grad.to(table.dtype))  # (V,)
    gain[current] = float("-inf")
    gain = gain.masked_fill(~allowed, float("-inf"))
    k = min(k, int(allowed.sum()) - int(bool(allowed[current])))
    return gain.topk(max(k, 0)).indices.tolist()


__all__ += ["hotflip"]


def token_gradient(lm, layout, header, table: torch.Tensor, found: list[int], loss_of) -> tuple[torch.Tensor, float]:
    """Gradient of a loss at each prompt token's embedding (k, hidden), and the loss (HotFlip's signal).

    The token prompt `found` sits after the chat header (`header`: its cached key/values) as vectors
    taken from `table`; `loss_of(prefix)` scores the task's rows after that prefix and returns a scalar
    tensor. One backward pass, charged to the model's budget.
    """
    emb = table[torch.tensor(found, device=lm.device)].clone().requires_grad_(True)  # (k, hidden)
    with torch.enable_grad():
        loss = loss_of(soft_prefix_kv(lm, layout, emb, "after_header", -1, header))
        loss.backward()
    lm.budget.charge(backward=1)
    return emb.grad.detach(), loss.item()
