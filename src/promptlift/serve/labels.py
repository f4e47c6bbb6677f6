"""A classifier route on an HTTP upstream answers with its label, decided the way `eval` decides it.

The label is the engine's own `classify` on the engine's endpoint backend
(`Endpoint` over `OpenAIModel`, pointed at the route's upstream): exactly what
`promptlift eval --model openai:MODEL --prompt ARTIFACT` runs, so a served
answer is eval's prediction for that input.

- chat requests: the rendered messages go to the upstream's /chat/completions;
  labels are ranked by the log-probability of their first token among the
  answer's `top_logprobs` (20);
- completions requests: the plain-text rendering goes to /completions; label
  words are scored in full with `echo` + `logprobs`;
- an upstream that returns no log-probabilities (probed once) is asked for a
  short answer, constrained to the label words where it has guided decoding
  (vLLM's `structured_outputs` / `guided_choice`, see `OpenAIModel`), and the
  answer is matched to the label words (`match_label`).

These calls run in a worker thread (the engine is synchronous) on their own
connection pool; their errors reach the client as a 502 that names neither the
upstream, the request nor the upstream's message (it may quote the hidden prompt).
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

from ..artifacts import Prompt
from ..engine.apply import applier_for
from ..engine.backends import Endpoint
from ..engine.evaluate import LabelAnswer, classify
from ..errors import ModelError
from .config import Limits
from .protocol import ServeError

TOP_LOGPROBS = 20  # first-token alternatives asked for on the chat API (OpenAI's maximum), as `eval` asks


class EndpointLabeler:
    """The labels of a route's classifier artifacts on one HTTP upstream (one `OpenAIModel` per API, made on
    first use, so the upstream is probed for log-probabilities once)."""

    def __init__(self, url: str, api_key: str | None, model: str, limits: Limits, transport: Any = None):
        self.url, self.api_key, self.model_name, self.limits = url, api_key, model, limits
        self.transport = transport if hasattr(transport, "handle_request") else None  # a sync one only
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()

    def model(self, api: str):
        """The engine's model of the upstream for `api` ("chat" | "completions")."""
        with self._lock:
            if api not in self._models:
                import httpx

                from ..lm.cache import CallCache
                from ..lm.openai import OpenAIModel

                lim = self.limits
                http = httpx.Client(transport=self.transport, timeout=httpx.Timeout(
                    lim.upstream_timeout_s, connect=lim.upstream_connect_timeout_s))
                self._models[api] = OpenAIModel(self.model_name, base_url=self.url, api_key=self.api_key or "EMPTY",
                                                max_retries=lim.upstream_retries, timeout=lim.upstream_timeout_s,
                                                cache=CallCache(enabled=False), http_client=http, api=api,
                                                top_logprobs=TOP_LOGPROBS, retry_backoff=0.05)
            return self._models[api]

    def classify(self, prompt: Prompt, task, endpoint: str, inputs: Sequence[Any]) -> list[LabelAnswer]:
        """Each input's label (blocking: run it in a worker thread). `endpoint`: "chat" or "completions"."""
        backend = Endpoint(self.model("chat" if endpoint == "chat" else "completions"))
        try:
            answers, _ = classify(applier_for(prompt), prompt, backend, task, list(inputs))
        except ModelError as e:  # its message may quote the upstream's error body, and that the hidden prompt
            raise ServeError(502, f"the upstream failed while the route ranked its labels ({type(e).__name__})",
                             "upstream_error", "upstream_error") from None
        return answers

    def close(self) -> None:
        with self._lock:
            models, self._models = list(self._models.values()), {}
        for m in models:
            m.close()


__all__ = ["EndpointLabeler", "TOP_LOGPROBS"]
