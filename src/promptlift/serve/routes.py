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
from ..errors import ArtifactError, ConfigError, UnsupportedError
from .apply import check_http, embeds_prompt, label_task
from .auth import KeyStore
from .config import DEFAULT_PROMPT, Limits, Route, ServeConfig
from .embeds import check_first_tokens, label_targets
from .labels import EndpointLabeler
from .local import LocalRunner, check_local
from .upstream import HttpUpstream


LOCAL, EMBEDS, TEXT = "local", "embeds", "text"  # how a prompt reaches the model (`LiveRoute.via`)


@dataclass
class LiveRoute:
    """A route ready to serve: its artifacts by name (with hashes) and where requests go.

    Decided here, per artifact, once: so the request path never asks which kind of artifact it holds.
    tasks: the label words each artifact's demonstrations answer with and a classifier answers with (a Task
      carrying only labels: the route's `labels:`, else the artifact's own), or None.
    answers: "label" (answer with the label `eval` predicts) or "generate" (free generation).
    via: LOCAL (the in-process model), EMBEDS (vLLM prompt_embeds) or TEXT (rendered messages, HTTP).
    """

    config: Route
    prompts: dict[str, Prompt]
    hashes: dict[str, str]
    max_tokens: int
    upstream_model: str
    tasks: dict[str, Any] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)
    via: dict[str, str] = field(default_factory=dict)
    http: HttpUpstream | None = None
    local: LocalRunner | None = None
    embeds_lm: Any = None  # the local model that builds vLLM prompt_embeds
    labeler: Any = None  # `serve.labels.EndpointLabeler`: a classifier's labels on an HTTP upstream

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
        self.labelers: dict[tuple, EndpointLabeler] = {}
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
        used = {id(r.labeler) for r in snapshot.routes.values() if r.labeler is not None}
        with self._lock:  # dropped, not closed: a request in flight may still use one (its client goes with it)
            self.labelers = {k: lab for k, lab in self.labelers.items() if id(lab) in used}

    def labeler(self, url: str, api_key: str | None, model: str, limits: Limits) -> EndpointLabeler:
        """What ranks a classifier's labels on an HTTP upstream (kept across reloads, like its pool)."""
        key = (url, api_key, model, limits)
        with self._lock:
            if key not in self.labelers:
                self.labelers[key] = EndpointLabeler(url, api_key, model, limits, self.transport)
            return self.labelers[key]

    async def aclose(self) -> None:
        for up in list(self.http.values()):
            await up.aclose()
        for lab in list(self.labelers.values()):
            lab.close()
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


def _answers(rc: Route, prompts: dict[str, Prompt]) -> tuple[dict[str, Any], dict[str, str]]:
    """Each artifact's label task and how it answers (see `LiveRoute`)."""
    route_task = label_task(rc.labels, rc.name)
    tasks = {name: route_task or p.label_task() for name, p in prompts.items()}
    answers = {}
    for name, task in tasks.items():
        if rc.answer == "label" and task is None:
            raise ConfigError(f"route {rc.name}: answer: label, but prompt {name!r} stores no label words (made "
                              "for a generation task, or saved before artifacts stored them): give the route "
                              "labels: {label: words, ...}")
        answers[name] = "label" if rc.answer != "generate" and task is not None else "generate"
    return tasks, answers


def _live_route(rc: Route, limits: Limits, res: Resources) -> LiveRoute:
    prompts = {name: load_prompt(rc.name, ref) for name, ref in rc.prompts.items()}
    hashes = {name: p.hash for name, p in prompts.items()}
    tasks, answers = _answers(rc, prompts)
    up = rc.upstream
    default = prompts[DEFAULT_PROMPT]
    live = LiveRoute(rc, prompts, hashes, rc.max_tokens or limits.max_tokens, up.model or rc.name, tasks, answers)
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
                check_local(p, live.local.lm, tasks[name])
            except (ConfigError, ArtifactError) as e:
                raise type(e)(f"route {rc.name}: prompt {name!r}: {e}") from None
            live.via[name] = LOCAL
        return live
    key = None
    if up.api_key_env:
        key = os.environ.get(up.api_key_env)
        if not key:
            raise ConfigError(f"route {rc.name}: environment variable {up.api_key_env} (the upstream's key) is not set")
    live.http = res.upstream(up.url, key, limits)
    for name, p in prompts.items():
        task = tasks[name]
        check_http(p, prompt_embeds=up.prompt_embeds, where=f"route {rc.name}: prompt {name!r}", task=task)
        soft = embeds_prompt(p) if up.prompt_embeds and not p.text_only else None
        live.via[name] = TEXT if soft is None else EMBEDS
        if answers[name] == "label":
            if soft is not None and soft is not p:  # its label scores are not the first token's (calibrated, ...)
                if rc.answer == "label":
                    raise ConfigError(f"route {rc.name}: prompt {name!r}: a {p.type} prompt sent to vLLM as "
                                      "prompt_embeds answers by generation only (answer: generate); serve it with "
                                      "--upstream local to answer with its label")
                answers[name] = "generate"
            elif soft is None and live.labeler is None:
                live.labeler = res.labeler(up.url, key, live.upstream_model, limits)
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
            if answers[name] == "label":
                try:
                    check_first_tokens(lm, label_targets(lm, soft, task), f"route {rc.name}: prompt {name!r}")
                except UnsupportedError as e:
                    raise ConfigError(f"{e} (a prompt_embeds route ranks labels the same way: "
                                      "use answer: generate, or --upstream local)") from None
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
                    "prompts": {n: {"sha256": h, "type": r.prompts[n].type, "path": str(r.config.prompts[n].path),
                                    "answer": r.answers[n]}
                                for n, h in r.hashes.items()}})
    return out


__all__ = ["LiveRoute", "Snapshot", "Resources", "build_snapshot", "load_prompt", "describe"]
