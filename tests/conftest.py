"""Shared fixtures: a tiny randomly initialised chat model built in the test (seconds), and the real bundled model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
if not SHARED.exists():  # CI checks out the repo with shared/ beside it
    SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

CHAT_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "<|im_start|>system\nYou are tiny.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "the movie was great and wonderful", "a terrible boring film", "science and technology news",
    "sports results today", "business and finance report", "world politics summit", "Classify the input.",
    "Answer with one of: positive, negative.", "very good very bad hot cold up down big small",
    "Input: Output: N/A [MASK] 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,:;!?'\"-",
]


def make_tokenizer(chat: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 5, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>" if not chat else None,
                                   eos_token="<|im_end|>" if chat else "<|endoftext|>",
                                   pad_token="<|endoftext|>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_lm(seed: int = 0, chat: bool = True, layers: int = 2, hidden: int = 32, init_range: float = 0.02,
                 max_positions: int = 1024):
    from transformers import LlamaConfig, LlamaForCausalLM

    from promptlift.lm.hf import HFModel

    tok = make_tokenizer(chat)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                      initializer_range=init_range,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg).float().eval()
    return HFModel("tiny-llama", model=model, tokenizer=tok)


@pytest.fixture
def tiny_lm():
    return make_tiny_lm()


@pytest.fixture
def tiny_plain_lm():
    return make_tiny_lm(chat=False)


@pytest.fixture(scope="session")
def real_lm():
    """The bundled SmolLM2-135M (dequantized once into the cache)."""
    from promptlift.lm.hf import HFModel

    return HFModel("smollm2-135m")


@pytest.fixture
def one_thread():
    """One torch thread: tiny models' matrices are too small for more, and on a busy 2-core machine two
    spinning threads make even the real model ~10x slower. Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    # Keep the LM call cache per test session; the model weight cache stays shared (slow to rebuild).
    os.environ.setdefault("PROMPTLIFT_CALL_CACHE", str(tmp_path_factory.mktemp("calls") / "calls.sqlite"))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    yield


def synth_task():
    """Sentiment words -> 'hot'/'cold': learnable by a prompt on a frozen random model."""

    import random

    from promptlift.task import Example, Task

    def split(n, seed):
        rng = random.Random(seed)
        pos, neg = ["great", "wonderful", "good"], ["terrible", "boring", "bad"]
        out = [Example(f"the movie was {rng.choice(pos if i % 2 else neg)}", "positive" if i % 2 else "negative")
               for i in range(n)]
        rng.shuffle(out)
        return out

    return Task(name="synth", kind="classification", train=split(48, 0), dev=split(24, 1), test=split(48, 2),
                labels={"negative": "cold", "positive": "hot"}, instruction="Classify.")


def learner():
    # initializer_range 0.3 gives attention that depends on its input, which a prompt can steer
    return make_tiny_lm(hidden=64, init_range=0.3)
