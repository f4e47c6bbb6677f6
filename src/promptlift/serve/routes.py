"""Turn a `ServeConfig` into live routes: artifacts loaded and verified, upstreams and models ready.

This is where the server reads artifact files and loads local models. Every
artifact must load (its own stored hash checks out) and have the content hash
the config pins, and must be one its upstream can apply; any failure is a
one-line error and nothing of the new configuration is used.

Models, local workers and HTTP connection pools live in `Resources`, which a
reload keeps: a reload re-reads the config and the artifacts only. A pool the
new routes no longer use (its limits changed) is closed once its requests finish.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..artifacts import Prompt
from ..artifacts import load as load_artifact
from ..errors import ArtifactError, ConfigError
from .apply import check_http, embeds_prompt, label_task
from .auth import KeyStore
from .config import DEFAULT_PROMPT, Limits, Route, ServeConfig
from .local import LocalRunner, check_local
from .upstream import HttpUpstream


@dataclass
class LiveRoute:
    """A route ready to serve: its artifacts by name (with hashes) and where requests go."""

    config: Route
    prompts: dict[str, Prompt]
    hashes: dict[str, str]
    task: Any  # a Task carrying label words, or None
    max_tokens: int
    upstream_model: str
    http: HttpUpstream | None = None
    local: LocalRunner | None = None
    embeds_lm: Any = None  # the local model that builds vLLM prompt_embeds

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class Snapshot:
    """Everything one request needs, swapped whole on reload (in-flight requests keep theirs)."""

    config: ServeConfig
    routes: dict[str, LiveRoute]
    keys: KeyStore
    generation: int = 0
    loaded_at: float = field(default_factory=time.time)


class Resources:
    """What outlives a reload: local models and their workers, HTTP connection pools.

    lms: models to use instead of loading them by name (tests pass a tiny model).
    transport: an httpx transport for every HTTP upstream (tests).
    """

    def __init__(self, lms: dict | None = None, transport=None,
                 load_model: Callable[[str], Any] | None = None):
        self.lms: dict[str, Any] = dict(lms or {})
        self.transport = transport
        self.load_model = load_model or _load_hf
        self.runners: dict[str, LocalRunner] = {}
        self.http: dict[tuple, HttpUpstream] = {}
        self._lock = threading.Lock()

    def lm(self, name: str):
        with self._lock:
            if name not in self.lms:
                self.lms[name] = self.load_model(name)
            return self.lms[name]

    def runner(self, name: str, limits: Limits) -> LocalRunner:
        """The one worker of a local model (one thread runs it); a reload may change its batching limits."""
        lm = self.lm(name)
        with self._lock:
            if name not in self.runners:
                self.runners[name] = LocalRunner(lm, limits.batch_window_ms, limits.max_batch)
            else:
                self.runners[name].configure(limits.batch_window_ms, limits.max_batch)
            return self.runners[name]

    def upstream(self, url: str, api_key: str | None, limits: Limits) -> HttpUpstream:
        """The pool of an upstream under `limits` (a reload that changes them makes a new pool)."""
        key = (url, api_key, limits)
        with self._lock:
            if key not in self.http:
                self.http[key] = HttpUpstream(url, api_key, limits, self.transport)
            return self.http[key]

    def retire_unused(self, snapshot: "Snapshot") -> None:
        """Close (once their requests are done) the pools `snapshot` does not use. In the event loop."""
        used = {id(r.http) for r in snapshot.routes.values() if r.http is not None}
        with self._lock:
            unused = [k for k, up in self.http.items() if id(up) not in used]
            retired = [self.http.pop(k) for k in unused]
        for up in retired:
            up.retire()

    async def aclose(self) -> None:
        for up in list(self.http.values()):
            await up.aclose()
        for r in self.runners.values():
            r.close()


def _load_hf(name: str):
    from ..lm.hf import HFModel

    return HFModel(name)


def _made_on(p: Prompt) -> str | None:
    """The model to load for an artifact (or the one it wraps): what it records, without the content hash.

    Artifacts record a model's identity ("smollm2-135m@sha256:..."); the model is loaded by the
    name before "@", and the applier's check then compares the loaded model's identity with it.
    """
    m = p.model or next((m for c in p.children() if (m := _made_on(c))), None)
    return m.split("@", 1)[0] if m and not m.startswith("openai:") else m


def load_prompt(route: str, ref) -> Prompt:
    """Load one artifact and check it has the pinned content hash."""
    prompt = load_artifact(ref.path)
    if prompt.hash != ref.sha256:
        raise ArtifactError(f"route {route}: prompt {ref.name!r} at {ref.path} has content hash {prompt.hash}, "
                            f"not the {ref.sha256} the config pins; refusing to serve it")
    return prompt


def build_snapshot(config: ServeConfig, resources: Resources, generation: int = 0) -> Snapshot:
    """Load and check every route of `config` (raises a one-line PromptliftError on the first problem)."""
    routes = {}
    for rc in config.routes:
        routes[rc.name] = _live_route(rc, config.limits, resources)
    return Snapshot(config, routes, KeyStore(config.keys), generation)


def _live_route(rc: Route, limits: Limits, res: Resources) -> LiveRoute:
    prompts = {name: load_prompt(rc.name, ref) for name, ref in rc.prompts.items()}
    hashes = {name: p.hash for name, p in prompts.items()}
    task = label_task(rc.labels, rc.name)
    up = rc.upstream
    default = prompts[DEFAULT_PROMPT]
    live = LiveRoute(rc, prompts, hashes, task, rc.max_tokens or limits.max_tokens, up.model or rc.name)
    if up.local:
        made_on = [m for p in [default, *prompts.values()] if (m := _made_on(p))]
        model = up.model or (made_on[0] if made_on else None)
        if not model:
            raise ConfigError(f"route {rc.name}: no artifact says which model it was made on; "
                              "name it: --upstream local:MODEL")
        live.upstream_model = model
        live.local = res.runner(model, limits)
        for name, p in prompts.items():
            try:
                check_local(p, live.local.lm, task)
            except (ConfigError, ArtifactError) as e:
                raise type(e)(f"route {rc.name}: prompt {name!r}: {e}") from None
        return live
    key = None
    if up.api_key_env:
        key = os.environ.get(up.api_key_env)
        if not key:
            raise ConfigError(f"route {rc.name}: environment variable {up.api_key_env} (the upstream's key) is not set")
    live.http = res.upstream(up.url, key, limits)
    for name, p in prompts.items():
        check_http(p, prompt_embeds=up.prompt_embeds, where=f"route {rc.name}: prompt {name!r}", task=task)
        soft = embeds_prompt(p) if up.prompt_embeds and not p.text_only else None
        if soft is not None:
            model = up.embeds_model or _made_on(soft)
            if not model:
                raise ConfigError(f"route {rc.name}: prompt {name!r}: name the model that builds its embeddings "
                                  "(embeds_model: the model vLLM serves)")
            lm = res.lm(model)
            if live.embeds_lm is not None and live.embeds_lm is not lm:
                raise ConfigError(f"route {rc.name}: soft prompts made on different models cannot share one upstream")
            try:
                check_local(soft, lm, task)
            except (ConfigError, ArtifactError) as e:
                raise type(e)(f"route {rc.name}: prompt {name!r}: {e}") from None
            live.embeds_lm = lm
    return live


def describe(snapshot: Snapshot) -> list[dict]:
    """What is served, for the start-up lines and /health."""
    out = []
    for r in snapshot.routes.values():
        up = r.config.upstream
        out.append({"route": r.name,
                    "upstream": ("local:" + r.upstream_model) if up.local else up.url and r.http.public,
                    "prompt_embeds": up.prompt_embeds,
                    "prompts": {n: {"sha256": h, "type": r.prompts[n].type, "path": str(r.config.prompts[n].path)}
                                for n, h in r.hashes.items()}})
    return out


__all__ = ["LiveRoute", "Snapshot", "Resources", "build_snapshot", "load_prompt", "describe"]
