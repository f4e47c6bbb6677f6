"""A small, real OpenAI-compatible HTTP server over a local `HFModel`, for tests (127.0.0.1 only).

It answers what vLLM and llama.cpp servers answer:
- POST /v1/chat/completions: the chat template of the messages (a final assistant message is
  continued when `continue_final_message` is set), greedy or sampled decoding, `logprobs` +
  `top_logprobs` for the generated tokens;
- POST /v1/completions: a plain-text prompt; `echo` + `logprobs` return the prompt tokens'
  log-probabilities (`max_tokens=0` allowed).
`script` injects failures: items (status, body) or ("sleep", seconds) used by the next requests.
Every request body is recorded in `requests`.
"""

from __future__ import annotations

import contextlib
import threading
import time

import torch
import torch.nn.functional as F
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from promptlift.lm.decode import decode
from promptlift.lm.base import GenerationConfig


class FakeOpenAIServer:
    """`with FakeOpenAIServer(lm) as srv: srv.base_url` — serves until the block ends."""

    def __init__(self, lm, *, logprobs: bool = True, top_k: int = 20):
        self.lm = lm
        self.logprobs = logprobs
        self.top_k = top_k
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

    def _chat(self, body: dict) -> dict:
        msgs = body["messages"]
        cont = bool(body.get("continue_final_message")) and msgs[-1]["role"] == "assistant"
        text = self.lm.tokenizer.apply_chat_template(msgs, tokenize=False, continue_final_message=cont,
                                                     add_generation_prompt=not cont)
        ids = self.lm.encode(text)
        want_lp = bool(body.get("logprobs")) and self.logprobs
        if want_lp:
            top, _ = self._first_logprobs(ids, int(body.get("top_logprobs") or 1))
        if want_lp and body.get("max_tokens") == 1 and not body.get("temperature") and (body.get("n") or 1) == 1:
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
