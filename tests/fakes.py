"""The fakes every test shares: a tiny random chat model and tokenizer built in the test, small tasks,
a scripted optimizer and rule-following targets, a real OpenAI-compatible server over a local model,
and the serving tests' fake upstream and configuration helpers. Fixtures live in conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
import torch.nn.functional as F
import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from promptlift import Task, TextPrompt
from promptlift.artifacts import TextPrompt
from promptlift.lm.base import LM, GenerationConfig
from promptlift.lm.budget import Budget, ledger_of
from promptlift.lm.decode import decode
from promptlift.methods.base import RunContext
from promptlift.serve.app import build_app
from promptlift.serve.config import hash_key
from promptlift.serve.embeds import decode_embeds
from promptlift.serve.server import ServerThread
from promptlift.task import Example, Task

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


REPO = Path(__file__).resolve().parents[1]


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


class ScriptedLM(LM):
    """An optimizer that answers from a script: `replies(request_text, seed, j) -> str`, or a list cycled through.

    Records every request (`requests`) and its config (`configs`); `fail_at=k` raises KeyboardInterrupt on the
    k-th request (0-based), as a kill would stop a run.
    """

    def __init__(self, replies, model_id: str = "scripted-optimizer", fail_at: int | None = None):
        self.replies, self.model_id, self.fail_at = replies, model_id, fail_at
        self.budget = Budget()
        self.requests: list[str] = []
        self.configs: list[GenerationConfig] = []
        self._i = 0

    def generate(self, prompts, config=None):
        config = config or GenerationConfig()
        out = []
        for p in prompts:
            if self.fail_at is not None and len(self.requests) == self.fail_at:
                raise KeyboardInterrupt("killed")
            text = p if isinstance(p, str) else "\n".join(m["content"] for m in p)
            self.requests.append(text)
            self.configs.append(config)
            outs = []
            for j in range(config.n):
                if callable(self.replies):
                    outs.append(self.replies(text, config.seed, j))
                else:
                    outs.append(self.replies[self._i % len(self.replies)])
                    self._i += 1
            out.append(outs)
            ledger_of(self).charge(calls=1, prompt_tokens=len(text.split()),
                               completion_tokens=sum(len(o.split()) for o in outs))
        return out


class RuleTarget(LM):
    """A chat endpoint without log-probabilities whose answer follows a rule on (instruction, input).

    evaluate() classifies by generation on it and matches the answer to the label words.
    With `proposals`, a request that ends in a partial assistant answer (a meta-prompt) is
    answered from that list instead: the target proposing for itself.
    """

    api = "chat"

    def __init__(self, rule, model_id: str = "rule-target", proposals=None):
        self.rule, self.model_id, self.proposals = rule, model_id, proposals
        self.budget = Budget()
        self.answered = 0
        self.proposed = 0

    def capabilities(self):
        return {"logprobs": False}

    def generate(self, prompts, config=None):
        config = config or GenerationConfig()
        out = []
        for msgs in prompts:
            if self.proposals is not None and (isinstance(msgs, str) or msgs[-1]["role"] == "assistant"):
                out.append([self.proposals[(self.proposed + j) % len(self.proposals)] for j in range(config.n)])
                self.proposed += config.n
            else:
                users = [m["content"] for m in msgs if m["role"] == "user"]
                instruction, _, first = users[0].rpartition("\n\n")  # "{instruction}\n\n{input}"
                out.append([self.rule(instruction, first if len(users) == 1 else users[-1])])
                self.answered += 1
            ledger_of(self).charge(calls=1, prompt_tokens=10, completion_tokens=1)
        return out


def sentiment_rule(instruction: str, text: str) -> str:
    """Reads the sentiment only when the instruction mentions it; otherwise always says 'negative'."""
    if "sentiment" in instruction.lower():
        return "positive" if "good" in text else "negative"
    return "negative"


def toy_task(n_dev: int = 8) -> Task:
    """Inputs with 'good' are positive, with 'bad' negative; train and dev disjoint."""
    words = ["film", "plot", "cast", "music", "story", "end", "start", "acting", "score", "pace", "script", "set"]
    rows = lambda ws: ([{"text": f"a good {w}", "label": "positive"} for w in ws]
                       + [{"text": f"a bad {w}", "label": "negative"} for w in ws])
    return Task.from_rows({"train": rows(words[:4]), "dev": rows(words[4 : 4 + n_dev // 2]), "test": rows(words[10:])},
                          name="toy", labels={"negative": "negative", "positive": "positive"})


def ctx(tmp_path=None, seed: int = 0, resume: bool = False, optimizer=None, rows: list | None = None) -> RunContext:
    c = RunContext(seed=seed, run_dir=tmp_path, resume=resume, progress=False,
                   log=(rows.append if rows is not None else None))
    if optimizer is not None:
        c.optimizer_lm = optimizer  # what the lead's RunContext.optimizer_lm will carry
    return c


def single_token_task() -> Task:
    # "the" and "up" are single tokens of the tiny tokenizer: first-token scores are whole-label scores
    rows = ["the movie was great", "a terrible boring film", "sports results today", "world politics summit",
            "science and technology news", "business and finance report"]
    exs = [Example(t, lab) for t, lab in zip(rows, ["a", "b"] * 3)]
    return Task(name="t", kind="classification", train=exs, dev=exs[:2], test=exs,
                labels={"a": "the", "b": "up"}, instruction="Classify the input.")


def multi_token_task() -> Task:
    t = single_token_task()
    return Task(name="t2", kind="classification", train=t.train, dev=t.dev, test=t.test,
                labels={"a": "positive", "b": "very negative"}, instruction="Classify the input.")


KEY, OTHER_KEY, ADMIN_KEY = "sk-alice-123", "sk-bob-456", "sk-admin-789"


INSTRUCTION = "Classify the sentiment of the review."


DEMOS = [Example("a wonderful film", "positive"), Example("dull and boring", "negative")]


class FakeUpstream:
    """An OpenAI-compatible server that answers from what it received and records every request.

    `script`: actions used by the next requests, in order: an int status (answered with an OpenAI error
    body), ("status", status, headers) the same with headers, ("quote", status): an error body quoting the
    request (as validation errors do), ("sleep", seconds) before answering normally, ("hold", seconds): a
    stream that waits that long after its first chunk, ("json",): a whole JSON answer even to `stream`, or
    ("break",): a stream that dies after one chunk.
    """

    def __init__(self):
        self.received: list[dict] = []
        self.script: list = []
        self.lock = threading.Lock()
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            return await self.answer(request, "chat")

        @app.post("/v1/completions")
        async def completions(request: Request):
            return await self.answer(request, "completions")

        self.app = app

    def reply(self, kind: str, body: dict) -> str:
        if kind == "chat":
            return "ok:" + body["messages"][-1]["content"][-24:]
        p = body["prompt"]
        return "ok:" + (p if isinstance(p, str) else p[0])[-24:]

    async def answer(self, request: Request, kind: str):
        body = json.loads(await request.body())
        with self.lock:
            self.received.append({"path": request.url.path, "body": body, "headers": dict(request.headers)})
            action = self.script.pop(0) if self.script else None
        if isinstance(action, int):
            action = ("status", action, {"retry-after": "0"} if action == 429 else None)
        if action and action[0] == "status":
            return JSONResponse({"error": {"message": f"scripted {action[1]}", "type": "server_error", "code": None}},
                                status_code=action[1], headers=action[2])
        if action and action[0] == "quote":
            quoted = body.get("messages") or body.get("prompt")
            return JSONResponse({"error": {"message": f"invalid request: {quoted!r}", "type": "BadRequestError",
                                           "code": action[1]},
                                 "detail": [{"loc": ["body", "messages"], "input": quoted}]}, status_code=action[1])
        if action and action[0] == "sleep":
            await asyncio.sleep(action[1])
        text = self.reply(kind, body)
        usage = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
        if body.get("stream") and action != ("json",):
            hold = action[1] if action and action[0] == "hold" else 0
            return StreamingResponse(self.events(kind, body, text, usage, action == ("break",), hold),
                                     media_type="text/event-stream")
        if kind == "chat":
            return {"id": "up-1", "object": "chat.completion", "created": 1, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}], "usage": usage}
        return {"id": "up-2", "object": "text_completion", "created": 1, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "text": text, "logprobs": None}], "usage": usage}

    async def events(self, kind, body, text, usage, broken=False, hold=0.0):
        half = len(text) // 2
        for i, part in enumerate((text[:half], text[half:])):
            if broken and i == 1:
                raise RuntimeError("the upstream died mid-stream")
            if hold and i == 1:
                await asyncio.sleep(hold)
            if kind == "chat":
                d = {"id": "s", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                     "choices": [{"index": 0, "delta": {"content": part}, "finish_reason": None}]}
            else:
                d = {"id": "s", "object": "text_completion", "created": 1, "model": body["model"],
                     "choices": [{"index": 0, "text": part, "finish_reason": None}]}
            yield f"data: {json.dumps(d)}\n\n"
        if (body.get("stream_options") or {}).get("include_usage"):
            last = {"id": "s", "object": "chat.completion.chunk", "created": 1, "model": body["model"], "choices": [],
                    "usage": usage}
            yield f"data: {json.dumps(last)}\n\n"
        yield "data: [DONE]\n\n"

    @property
    def last(self) -> dict:
        return self.received[-1]["body"]


@pytest.fixture
def fake():
    up = FakeUpstream()
    with ServerThread(up.app) as srv:
        up.url = srv.url + "/v1"
        up.server = srv  # its open connections: srv.server.server_state.connections
        yield up


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def save(prompt, path: Path) -> tuple[Path, str]:
    prompt.save(path)
    return path, prompt.hash


def write_config(tmp_path: Path, doc: dict) -> Path:
    p = tmp_path / "serve.yaml"
    p.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return p


class Proxy:
    """A proxy in a thread, with its log lines and a fake clock for the rate limiter."""

    def __init__(self, config, reload_config=None, resources=None):
        self.lines: list[dict] = []
        self.now = [1000.0]
        self.app = build_app(config, reload_config=reload_config, clock=lambda: self.now[0],
                             log_line=self.lines.append, resources=resources)
        self.server = ServerThread(self.app).start()
        self.url = self.server.url

    def client(self, key: str | None = KEY, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or "none", max_retries=0, timeout=20, **kw)

    def post(self, path: str, body: dict | bytes, key: str | None = KEY, headers: dict | None = None) -> httpx.Response:
        h = dict(headers or {})
        if key:
            h["authorization"] = f"Bearer {key}"
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(self.url + path, content=content, headers={"content-type": "application/json", **h},
                          timeout=20)

    def requests(self, n: int, timeout: float = 10.0) -> list[dict]:
        """The request log lines, once there are `n` (a streamed reply is logged after its last chunk
        reaches the client, so the client can finish reading first)."""
        end = time.monotonic() + timeout
        while True:
            lines = [x for x in self.lines if x.get("event") == "request"]
            if len(lines) >= n or time.monotonic() > end:
                return lines
            time.sleep(0.01)

    def stop(self):
        self.server.stop()


@pytest.fixture
def proxies():
    made = []

    def make(*a, **kw):
        p = Proxy(*a, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


def basic_config(tmp_path, fake, *, limits=None, keys=True, extra_routes=(), prompts=None, labels=None,
                 prompt=None) -> Path:
    path, sha = save(prompt or TextPrompt(instruction=INSTRUCTION, demos=DEMOS), tmp_path / "main")
    route = {"name": "sentiment", "upstream": fake.url, "upstream_model": "up-model", "prompt": str(path),
             "sha256": sha}
    if prompts:
        route["prompts"] = prompts
    if labels:
        route["labels"] = labels
    doc = {"routes": [route, *extra_routes], "limits": limits or {}}
    if keys:
        doc["keys"] = [{"name": "alice", "sha256": hash_key(KEY)},
                       {"name": "bob", "sha256": hash_key(OTHER_KEY), "routes": ["other"]},
                       {"name": "ops", "sha256": hash_key(ADMIN_KEY), "admin": True}]
        if not any(r["name"] == "other" for r in extra_routes):
            doc["routes"].append({"name": "other", "upstream": fake.url, "prompt": str(path), "sha256": sha})
    return write_config(tmp_path, doc)


def assert_error(resp: httpx.Response, status: int, type_: str, code: str):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) >= {"message", "type", "code"}
    assert (err["type"], err["code"]) == (type_, code), err
    assert err["message"]


class FakeOpenAIServer:
    """`with FakeOpenAIServer(lm) as srv: srv.base_url` — serves until the block ends.

    guided: the field of vLLM's guided choice it honours ("structured_outputs" or "guided_choice": the answer is
    the choice whose tokens the model scores highest); strict: refuse those fields (400), as OpenAI does.
    """

    def __init__(self, lm, *, logprobs: bool = True, top_k: int = 20, guided: str | None = None,
                 strict: bool = False):
        self.lm = lm
        self.logprobs = logprobs
        self.top_k = top_k
        self.guided = guided
        self.strict = strict
        self.requests: list[dict] = []
        self.script: list = []
        self.lock = threading.Lock()
        self.app = self._make_app()
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.base_url = ""

    # --- the model -----------------------------------------------------------------------------
    def _tok(self, i: int) -> str:
        return self.lm.tokenizer.decode([i])

    @torch.no_grad()
    def _first_logprobs(self, ids: list[int], k: int) -> tuple[list[tuple[str, float]], torch.Tensor]:
        h, _ = self.lm.forward(ids=torch.tensor([ids]))
        lp = F.log_softmax(self.lm.logits(h[0, -1]).float(), dim=-1)
        top = lp.topk(k)
        return [(self._tok(int(i)), float(v)) for v, i in zip(top.values, top.indices)], lp

    def _generate(self, ids: list[int], body: dict) -> list[str]:
        cfg = GenerationConfig(n=int(body.get("n") or 1), temperature=float(body.get("temperature") or 0.0),
                               max_tokens=int(body.get("max_tokens") or 16), stop=list(body.get("stop") or []),
                               seed=body.get("seed"))
        return decode(self.lm, None, [ids], cfg)[0]

    def _choice(self, ids: list[int], body: dict) -> str | None:
        """The guided choice answered, if the request asks for one in the field this server honours."""
        want = body.get(self.guided) if self.guided else None
        choices = want.get("choice") if isinstance(want, dict) else want
        if not choices:
            return None
        from promptlift.lm.scoring import score_candidates

        scores = score_candidates(self.lm, None, [ids], [[self.lm.encode(c) for c in choices]])[0]
        return choices[int(scores.argmax())]

    def _chat(self, body: dict) -> dict:
        msgs = body["messages"]
        cont = bool(body.get("continue_final_message")) and msgs[-1]["role"] == "assistant"
        text = self.lm.tokenizer.apply_chat_template(msgs, tokenize=False, continue_final_message=cont,
                                                     add_generation_prompt=not cont)
        ids = self.lm.encode(text)
        want_lp = bool(body.get("logprobs")) and self.logprobs
        if want_lp:
            top, _ = self._first_logprobs(ids, int(body.get("top_logprobs") or 1))
        chosen = self._choice(ids, body)
        if chosen is not None:
            outs = [chosen]
        elif want_lp and body.get("max_tokens") == 1 and not body.get("temperature") and (body.get("n") or 1) == 1:
            outs = [top[0][0]]  # greedy, one token: the most likely one, already computed
        else:
            outs = self._generate(ids, body)
        choices = []
        for j, o in enumerate(outs):
            c = {"index": j, "finish_reason": "stop", "message": {"role": "assistant", "content": o}}
            if want_lp:
                first = top[0]
                c["logprobs"] = {"content": [{"token": first[0], "logprob": first[1], "bytes": None,
                                              "top_logprobs": [{"token": t, "logprob": v, "bytes": None}
                                                               for t, v in top]}]}
            choices.append(c)
        usage = {"prompt_tokens": len(ids), "completion_tokens": sum(len(self.lm.encode(o)) for o in outs)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": choices, "usage": usage}

    @torch.no_grad()
    def _completion(self, body: dict) -> dict:
        prompt = body["prompt"]
        ids = self.lm.encode(prompt, bos=not self.lm.has_chat_template)
        max_tokens = int(body.get("max_tokens") if body.get("max_tokens") is not None else 16)
        text = self._generate(ids, {**body, "max_tokens": max_tokens})[0] if max_tokens > 0 else ""
        choice: dict = {"index": 0, "finish_reason": "stop", "text": (prompt if body.get("echo") else "") + text}
        if body.get("logprobs") is not None and body.get("echo") and self.logprobs:
            h, _ = self.lm.forward(ids=torch.tensor([ids]))
            lp = F.log_softmax(self.lm.logits(h[0]).float(), dim=-1)
            toks = [self._tok(i) for i in ids]
            token_lps = [None] + [float(lp[p - 1, ids[p]]) for p in range(1, len(ids))]
            offsets, pos = [], 0
            for t in toks:
                offsets.append(pos)
                pos += len(t)
            choice["logprobs"] = {"tokens": toks, "token_logprobs": token_lps, "text_offset": offsets,
                                  "top_logprobs": None}
        return {"id": "cmpl-test", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": [choice], "usage": {"prompt_tokens": len(ids), "completion_tokens": 0,
                                               "total_tokens": len(ids)}}

    # --- HTTP ---------------------------------------------------------------------------------
    def _make_app(self) -> FastAPI:
        app = FastAPI()

        def handle(body: dict, fn):
            with self.lock:
                self.requests.append(body)
                scripted = self.script.pop(0) if self.script else None
            unknown = {"structured_outputs", "guided_choice"} & set(body)
            if self.strict and unknown:
                return JSONResponse({"error": {"message": f"Unrecognized request argument supplied: "
                                               f"{sorted(unknown)[0]}", "type": "invalid_request_error"}},
                                    status_code=400)
            if scripted is not None:
                if scripted[0] == "sleep":
                    time.sleep(scripted[1])
                else:
                    return JSONResponse(scripted[1], status_code=scripted[0])
            with self.lock:  # one forward pass at a time
                return JSONResponse(fn(body))

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            return handle(await request.json(), self._chat)

        @app.post("/v1/completions")
        async def completions(request: Request):
            return handle(await request.json(), self._completion)

        return app

    def __enter__(self) -> "FakeOpenAIServer":
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="error", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not (self.server.started and self.server.servers):
            if time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)


@contextlib.contextmanager
def serving(lm, **kw):
    """Context manager: a running `FakeOpenAIServer` over `lm`."""
    with FakeOpenAIServer(lm, **kw) as srv:
        yield srv


class FakeVllm:
    """/v1/completions with `prompt_embeds` (vLLM --enable-prompt-embeds), answered by the tiny model itself."""

    def __init__(self, lm):
        self.lm = lm
        self.received: list[dict] = []
        app = FastAPI()

        @app.post("/v1/completions")
        async def completions(request: Request):
            body = json.loads(await request.body())
            t = decode_embeds(body["prompt_embeds"])
            self.received.append({**body, "tensor": t})
            cfg = GenerationConfig(max_tokens=body.get("max_tokens", 16))
            text = decode(self.lm, None, [[0] * t.shape[0]], cfg, row_embeds=t.unsqueeze(0))[0][0]
            logprobs = None
            if body.get("logprobs") is not None:  # vLLM: the first generated token's top log-probabilities
                with torch.no_grad():
                    hidden, _ = self.lm.forward(embeds=t.unsqueeze(0).to(self.lm.device))
                    lp = F.log_softmax(self.lm.logits(hidden[0, -1]).float(), dim=-1).cpu()
                allowed = body.get("allowed_token_ids") or list(range(lp.shape[0]))
                gen = max(allowed, key=lambda i: float(lp[i]))  # greedy among the allowed tokens
                top = lp.topk(int(body["logprobs"]))  # raw log-probabilities, as vLLM reports them
                tok = self.lm.tokenizer.decode
                tops = {tok([int(i)]): float(v) for v, i in zip(top.values, top.indices)}
                tops[tok([gen])] = float(lp[gen])
                text = tok([gen])
                logprobs = {"tokens": [text], "token_logprobs": [float(lp[gen])], "text_offset": [0],
                            "top_logprobs": [tops]}
            usage = {"prompt_tokens": t.shape[0], "completion_tokens": 2, "total_tokens": t.shape[0] + 2}
            if body.get("stream"):
                async def events():
                    for part in (text[:3], text[3:]):
                        yield "data: " + json.dumps({"id": "c", "object": "text_completion", "created": 1,
                                                     "model": body["model"], "choices": [
                                                         {"index": 0, "text": part, "finish_reason": None}]}) + "\n\n"
                    yield "data: " + json.dumps({"id": "c", "object": "text_completion", "created": 1,
                                                 "model": body["model"], "choices": [
                                                     {"index": 0, "text": "", "finish_reason": "stop"}]}) + "\n\n"
                    yield "data: [DONE]\n\n"

                return StreamingResponse(events(), media_type="text/event-stream")
            return {"id": "c", "object": "text_completion", "created": 1, "model": body["model"],
                    "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": logprobs}],
                    "usage": usage}

        self.app = app
