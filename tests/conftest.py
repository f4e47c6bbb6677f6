"""Shared fixtures: a tiny randomly initialised chat model built in the test (seconds), and the real bundled model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).resolve().parent / "data"  # the few public rows the real-model tests read (README there)

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
    # The LM call cache is per test session (PROMPTLIFT_CALL_CACHE, read by lm/cache.py); the model weight
    # cache (PROMPTLIFT_CACHE_DIR) stays shared: it is slow to rebuild and tests only read it.
    os.environ["PROMPTLIFT_CALL_CACHE"] = str(tmp_path_factory.mktemp("calls") / "calls.sqlite")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    yield


# --- nothing outside the repository --------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
_OUTSIDE: list[tuple[str, str]] = []  # (path, test) read outside the repository, or the user's call cache


def _not_data_dirs() -> tuple[str, ...]:
    """Folders beside the repository that hold no test data: caches, temp, the interpreter and its packages."""
    import site
    import sysconfig
    import tempfile

    home = Path.home()
    dirs = [tempfile.gettempdir(), home / ".cache", home / ".config", home / ".local", sys.prefix, sys.base_prefix,
            sys.exec_prefix, *site.getsitepackages(), site.getusersitepackages(), sysconfig.get_paths()["stdlib"]]
    dirs += [os.environ[v] for v in ("XDG_CACHE_HOME", "HF_HOME", "PROMPTLIFT_CACHE_DIR", "TMPDIR") if os.environ.get(v)]
    dirs = [os.path.abspath(d) + os.sep for d in dirs]
    return tuple(d for d in dirs if not (str(REPO) + os.sep).startswith(d))  # a clone in /tmp is still watched


def outside_repo(path: str, repo: Path = REPO, allowed: tuple[str, ...] = ()) -> bool:
    """True for a path beside the repository (under its parent, not under it): data a fresh clone lacks.
    Hidden folders there (.cache, .venv...) and `allowed` folders (caches, temp, packages) are not data."""
    p = os.path.abspath(path)
    parent, root = str(repo.parent) + os.sep, str(repo) + os.sep
    if not p.startswith(parent) or p.startswith(root) or p + os.sep == root:
        return False
    return not p[len(parent):].startswith(".") and not (p + os.sep).startswith(allowed)


def read_guard(sink: list, user_calls: str, allowed: tuple[str, ...] = ()):
    """An audit hook appending to `sink` (path, test) for each file or folder opened beside the repository,
    and for each connection to the user's call cache `user_calls`."""
    def hook(event: str, args: tuple) -> None:
        if event == "open" or event == "os.listdir" or event == "os.scandir":
            path = args[0] if args else None
        elif event == "sqlite3.connect":
            path = args[0] if args else None
            if isinstance(path, (str, os.PathLike)) and os.path.abspath(path) == user_calls:
                sink.append((user_calls + " (the user's call cache)", os.environ.get("PYTEST_CURRENT_TEST", "")))
            return
        else:
            return
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if isinstance(path, (str, os.PathLike)) and outside_repo(os.fspath(path), REPO, allowed):
            sink.append((os.path.abspath(path), os.environ.get("PYTEST_CURRENT_TEST", "")))
    return hook


_GUARD_ON = False


@pytest.fixture(scope="session", autouse=True)
def _no_reads_outside_repo(_cache_dir):
    """Fails the session if any test opened a file beside the repository (a datasets folder next to the
    checkout: a fresh clone has none) or the user's call cache. Subprocesses are not watched: test_repo_data.py checks that no
    test names such a path."""
    global _GUARD_ON
    user_calls = os.path.abspath(Path(os.environ.get("PROMPTLIFT_CACHE_DIR") or Path.home() / ".cache" / "promptlift")
                                 .expanduser() / "calls.sqlite")
    if not _GUARD_ON:  # an audit hook cannot be removed: install it once per process
        sys.addaudithook(read_guard(_OUTSIDE, user_calls, _not_data_dirs()))
        _GUARD_ON = True
    yield
    if _OUTSIDE:
        seen = list(dict.fromkeys(_OUTSIDE))
        lines = "\n".join(f"  {p}  ({t.rsplit(' ', 1)[0] or 'outside a test'})" for p, t in seen[:20])
        pytest.fail(f"tests read {len(seen)} path(s) outside the repository; ship what they need under "
                    f"tests/data/:\n{lines}", pytrace=False)


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
