"""What `promptlift serve` serves: routes, keys and limits, from a YAML file or the command line.

A route maps a public model name (what clients send as `model`) to an upstream,
a default prompt artifact, optional other artifacts that a request may pick with
the `X-Promptlift-Prompt` header, and options. Every artifact is named with its
content hash (`sha256`, the `Prompt.hash` printed by `promptlift serve --prompt`
at start-up); an artifact whose content does not match is never served.

API keys are stored as sha256 hex digests of the bearer token, never in clear:

    printf %s "$KEY" | sha256sum

See `examples/serve.yaml` for every field with its default. Validation errors
are one-line `ConfigError`s naming the file and the field.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError

ANSWERS = ("label", "generate")  # a classifier route answers with its label, or generates freely
PROMPT_HEADER = "x-promptlift-prompt"
DEFAULT_PROMPT = "default"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")


@dataclass(frozen=True)
class Limits:
    """Limits every request is checked against (see examples/serve.yaml)."""

    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    max_tokens: int = 1024  # a request asking for more gets 400; one asking nothing gets this
    requests_per_minute: int = 0  # per API key (per client address without keys); 0 = no limit
    upstream_timeout_s: float = 60.0  # per upstream request (connect + read); then 504
    upstream_connect_timeout_s: float = 5.0
    upstream_retries: int = 2  # extra tries after a 429, a 5xx or a refused connection
    upstream_max_connections: int = 256  # connection pool size per upstream
    batch_window_ms: float = 5.0  # local upstream: how long a request waits for others to batch with
    max_batch: int = 16  # local upstream: most requests in one forward pass
    client_body_timeout_s: float = 30.0  # a request body not complete by then: 408
    # the HTTP server's, applied at start-up (a reload does not change them):
    client_header_timeout_s: float = 10.0  # a request head not complete by then: the connection is closed
    keep_alive_timeout_s: float = 5.0  # an idle kept-alive connection is closed after this
    max_connections: int = 2048  # open connections + requests in flight; beyond it new requests get 503


@dataclass(frozen=True)
class PromptRef:
    """One artifact of a route: where it is and the content hash it must have."""

    name: str
    path: Path
    sha256: str


@dataclass(frozen=True)
class Upstream:
    """Where a route's requests go.

    url: an OpenAI-compatible base URL ending in /v1 (e.g. http://127.0.0.1:8001/v1), or None for the
      in-process local model.
    model: the model name sent upstream (HTTP; default: the route name), or the local model
      (bundled alias, directory or .gguf; default: the model the artifact was made on).
    api_key_env: environment variable holding the upstream's key (keys are never put in the file).
    prompt_embeds: the upstream is vLLM started with --enable-prompt-embeds: soft prompts are sent as
      input embeddings to its /v1/completions.
    embeds_model: the local model whose tokenizer, chat template and input embeddings build those
      embeddings (default: the model the soft prompt was made on); it must be the upstream's model.
    """

    url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    prompt_embeds: bool = False
    embeds_model: str | None = None

    @property
    def local(self) -> bool:
        return self.url is None


@dataclass(frozen=True)
class Route:
    """A public model name -> (upstream, artifacts, options)."""

    name: str
    upstream: Upstream
    prompts: Mapping[str, PromptRef]  # DEFAULT_PROMPT and the names a request may pick by header
    labels: Mapping[str, str] | None = None  # label -> label words: how demonstrations answer (classification)
    max_tokens: int | None = None  # overrides limits.max_tokens for this route
    answer: str | None = None  # "label" | "generate"; None: "label" for a classifier's artifact, else "generate"


@dataclass(frozen=True)
class ApiKey:
    """A bearer key, by the sha256 of its text. routes / prompts None = every route / prompt; admin = may reload."""

    name: str
    sha256: str
    routes: tuple[str, ...] | None = None
    requests_per_minute: int | None = None  # overrides limits.requests_per_minute
    admin: bool = False
    prompts: tuple[str, ...] | None = None  # the route prompts it may use (DEFAULT_PROMPT: the route's own)


@dataclass(frozen=True)
class ServeConfig:
    """Everything the server needs; `reload` re-reads it from `source` (a YAML file) when set."""

    routes: tuple[Route, ...]
    keys: tuple[ApiKey, ...] = ()
    limits: Limits = field(default_factory=Limits)
    log_content: bool = False  # log request messages and answers (never by default)
    host: str = "127.0.0.1"
    port: int = 8000
    source: Path | None = None
    workers: int = 1  # server processes behind the one port (`auto` in serve.yaml: the usable cores)

    def route(self, name: str) -> Route | None:
        for r in self.routes:
            if r.name == name:
                return r
        return None


def hash_key(key: str) -> str:
    """sha256 hex digest of an API key (what the config stores)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


# --- parsing ---------------------------------------------------------------------------------


def _fail(where: str, msg: str) -> ConfigError:
    return ConfigError(f"{where}: {msg}")


def _mapping(v: Any, where: str) -> dict:
    if not isinstance(v, Mapping):
        raise _fail(where, f"expected a mapping, got {type(v).__name__}")
    return dict(v)


def _known(d: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise _fail(where, f"unknown field(s) {', '.join(map(str, unknown))}; expected: {', '.join(allowed)}")


def _str(v: Any, where: str, *, optional: bool = False) -> str | None:
    if v is None and optional:
        return None
    if not isinstance(v, str) or not v.strip():
        raise _fail(where, f"expected a non-empty string, got {v!r}")
    return v.strip()


def _int(v: Any, where: str, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _fail(where, f"expected an integer >= {lo}, got {v!r}")
    return v


def _num(v: Any, where: str, lo: float = 0.0) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo:
        raise _fail(where, f"expected a number >= {lo}, got {v!r}")
    return float(v)


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise _fail(where, f"expected true or false, got {v!r}")
    return v


def _sha(v: Any, where: str) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        raise _fail(where, "a sha256 hex digest read as a number: put it in quotes")
    s = _str(v, where)
    s = s[len("sha256:"):] if s.startswith("sha256:") else s
    if not _HEX64.match(s):
        raise _fail(where, f"expected a sha256 hex digest (64 lower-case hex digits), got {v!r}")
    return s


def _name(v: Any, where: str) -> str:
    s = _str(v, where)
    if not _NAME.match(s):
        raise _fail(where, f"names use letters, digits and ._:/@+- (at most 128), got {v!r}")
    return s


def parse_upstream(spec: str, where: str = "--upstream") -> tuple[str | None, str | None]:
    """`URL` -> (url, None); `local` -> (None, None); `local:MODEL` -> (None, MODEL)."""
    spec = (spec or "").strip()
    if spec == "local":
        return None, None
    if spec.startswith("local:"):
        model = spec[len("local:"):].strip()
        if not model:
            raise _fail(where, "expected local:MODEL with a model name")
        return None, model
    if spec.startswith(("http://", "https://")):
        return spec.rstrip("/"), None
    raise _fail(where, f"expected an http(s) URL of an OpenAI-compatible API, 'local' or 'local:MODEL', got {spec!r}")


LIMIT_FIELDS = tuple(Limits.__dataclass_fields__)
ROUTE_FIELDS = ("name", "upstream", "upstream_model", "upstream_api_key_env", "prompt_embeds", "embeds_model",
                "prompt", "sha256", "prompts", "labels", "max_tokens", "answer")
KEY_FIELDS = ("name", "sha256", "routes", "prompts", "requests_per_minute", "admin")
TOP_FIELDS = ("host", "port", "workers", "limits", "log_content", "keys", "routes")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        return os.cpu_count() or 1


def parse_workers(v: Any, where: str) -> int:
    """`workers`: an integer >= 1 or `auto` (the usable cores)."""
    if v == "auto":
        return usable_cores()
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    return _int(v, where, 1)


def _limits(d: Any, where: str) -> Limits:
    d = _mapping(d, where)
    backend = d.pop("backend", "local")
    if backend != "local":  # the counts live in a file the workers of one machine share
        raise _fail(f"{where}.backend", f"only 'local' (the workers of one machine share the counts) is supported "
                                        f"yet, got {backend!r}; behind a load balancer, set the limit there")
    _known(d, LIMIT_FIELDS, where)
    kw: dict[str, Any] = {}
    for k, v in d.items():
        default = getattr(Limits, k)
        kw[k] = _num(v, f"{where}.{k}") if isinstance(default, float) else _int(v, f"{where}.{k}")
    for k in ("max_body_bytes", "max_tokens", "max_batch", "upstream_max_connections", "max_connections"):
        if k in kw and kw[k] < 1:
            raise _fail(f"{where}.{k}", "must be >= 1")
    for k in [k for k in kw if k.endswith("_timeout_s")]:
        if kw[k] <= 0:
            raise _fail(f"{where}.{k}", "timeouts must be > 0")
    return Limits(**kw)


def _prompt_ref(name: str, d: Any, base: Path, where: str) -> PromptRef:
    if isinstance(d, str):
        raise _fail(where, "expected {path: ..., sha256: ...}: every artifact is named with its content hash")
    d = _mapping(d, where)
    _known(d, ("path", "sha256"), where)
    if "sha256" not in d:
        raise _fail(where, "sha256 is required: the artifact's content hash (printed by `promptlift serve "
                           "--prompt PATH` at start-up, or the 'sha256' field of its prompt.json)")
    path = Path(_str(d.get("path"), f"{where}.path")).expanduser()
    return PromptRef(name, path if path.is_absolute() else base / path, _sha(d["sha256"], f"{where}.sha256"))


def _route(d: Any, base: Path, where: str) -> Route:
    d = _mapping(d, where)
    _known(d, ROUTE_FIELDS, where)
    name = _name(d.get("name"), f"{where}.name")
    where = f"{where} ({name})"
    url, local_model = parse_upstream(_str(d.get("upstream"), f"{where}.upstream"), f"{where}.upstream")
    upstream_model = _str(d.get("upstream_model"), f"{where}.upstream_model", optional=True)
    if url is None and upstream_model and local_model and upstream_model != local_model:
        raise _fail(where, "upstream local:MODEL and upstream_model disagree; give the model once")
    prompt_embeds = _bool(d.get("prompt_embeds", False), f"{where}.prompt_embeds")
    if prompt_embeds and url is None:
        raise _fail(f"{where}.prompt_embeds", "only applies to an HTTP upstream (vLLM with --enable-prompt-embeds)")
    up = Upstream(url=url, model=local_model or upstream_model,
                  api_key_env=_str(d.get("upstream_api_key_env"), f"{where}.upstream_api_key_env", optional=True),
                  prompt_embeds=prompt_embeds,
                  embeds_model=_str(d.get("embeds_model"), f"{where}.embeds_model", optional=True))
    prompts: dict[str, PromptRef] = {}
    if "prompt" not in d:
        raise _fail(where, "prompt is required: the default artifact (a run directory or prompt.json)")
    own = {"path": d["prompt"], **({"sha256": d["sha256"]} if "sha256" in d else {})}
    prompts[DEFAULT_PROMPT] = _prompt_ref(DEFAULT_PROMPT, own, base, where)
    for pname, pd in _mapping(d.get("prompts") or {}, f"{where}.prompts").items():
        pname = _name(pname, f"{where}.prompts")
        if pname == DEFAULT_PROMPT:
            raise _fail(f"{where}.prompts", f"{DEFAULT_PROMPT!r} is the route's own prompt; pick another name")
        prompts[pname] = _prompt_ref(pname, pd, base, f"{where}.prompts.{pname}")
    labels = None
    if d.get("labels") is not None:
        raw = _mapping(d["labels"], f"{where}.labels")
        labels = {str(k): _str(v, f"{where}.labels.{k}") for k, v in raw.items()}
        if len(labels) < 2:
            raise _fail(f"{where}.labels", "a classification task has at least 2 labels")
    mt = _int(d["max_tokens"], f"{where}.max_tokens", 1) if d.get("max_tokens") is not None else None
    answer = parse_answer(d.get("answer"), f"{where}.answer")
    return Route(name, up, prompts, labels, mt, answer)


def parse_answer(v: Any, where: str) -> str | None:
    """`answer:` of a route: None (by the artifact), "label" or "generate"."""
    if v is None:
        return None
    if v not in ANSWERS:
        raise _fail(where, f"expected one of: {', '.join(ANSWERS)}, got {v!r}")
    return v


def _key(d: Any, i: int, routes: dict[str, Route], where: str) -> ApiKey:
    d = _mapping(d, where)
    if "key" in d:
        raise _fail(where, "keys are stored hashed: give sha256 (printf %s \"$KEY\" | sha256sum), not the key")
    _known(d, KEY_FIELDS, where)
    name = _name(d.get("name", f"key{i}"), f"{where}.name")
    rs = d.get("routes")
    routes_t: tuple[str, ...] | None = None
    if rs is not None and rs != "*":
        if not isinstance(rs, list) or not rs:
            raise _fail(f"{where}.routes", "expected a list of route names or '*'")
        routes_t = tuple(_str(r, f"{where}.routes") for r in rs)
        missing = [r for r in routes_t if r not in routes]
        if missing:
            raise _fail(f"{where}.routes",
                        f"unknown route(s) {', '.join(missing)}; routes: {', '.join(sorted(routes))}")
    prompts_t: tuple[str, ...] | None = None
    ps = d.get("prompts")
    if ps is not None and ps != "*":
        if not isinstance(ps, list) or not ps:
            raise _fail(f"{where}.prompts", f"expected a list of prompt names ({DEFAULT_PROMPT}: a route's own) or '*'")
        prompts_t = tuple(_str(x, f"{where}.prompts") for x in ps)
        known = {n for r in (routes_t or routes) for n in routes[r].prompts}
        missing = [x for x in prompts_t if x not in known]
        if missing:
            raise _fail(f"{where}.prompts", f"unknown prompt(s) {', '.join(missing)} on this key's routes; "
                                            f"they have: {', '.join(sorted(known))}")
    rpm = d.get("requests_per_minute")
    return ApiKey(name, _sha(d.get("sha256"), f"{where}.sha256"), routes_t,
                  _int(rpm, f"{where}.requests_per_minute") if rpm is not None else None,
                  _bool(d.get("admin", False), f"{where}.admin"), prompts_t)


def parse_config(data: Any, source: Path | None = None) -> ServeConfig:
    """Validate a parsed YAML document; relative paths are relative to the file's folder."""
    where = str(source) if source else "serve config"
    base = source.parent if source else Path.cwd()
    d = _mapping(data if data is not None else {}, where)
    _known(d, TOP_FIELDS, where)
    raw_routes = d.get("routes")
    if not isinstance(raw_routes, list) or not raw_routes:
        raise _fail(where, "routes: expected a non-empty list of routes")
    routes = tuple(_route(r, base, f"{where}: routes[{i}]") for i, r in enumerate(raw_routes))
    names = [r.name for r in routes]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _fail(where, f"route name(s) used twice: {', '.join(dup)}")
    raw_keys = d.get("keys") or []
    if not isinstance(raw_keys, list):
        raise _fail(where, "keys: expected a list")
    keys = tuple(_key(k, i, {r.name: r for r in routes}, f"{where}: keys[{i}]") for i, k in enumerate(raw_keys))
    kn = [k.name for k in keys]
    kdup = sorted({n for n in kn if kn.count(n) > 1} | {k.sha256[:12] for k in keys
                                                        if [x.sha256 for x in keys].count(k.sha256) > 1})
    if kdup:
        raise _fail(where, f"keys: name or key used twice: {', '.join(kdup)}")
    limits = _limits(d.get("limits") or {}, f"{where}: limits")
    host = _str(d.get("host", "127.0.0.1"), f"{where}: host")
    port = _int(d.get("port", 8000), f"{where}: port")
    if port > 65535:
        raise _fail(f"{where}: port", f"expected 0..65535, got {port}")
    workers = parse_workers(d.get("workers", 1), f"{where}: workers")
    return ServeConfig(routes, keys, limits, _bool(d.get("log_content", False), f"{where}: log_content"),
                       host, port, source, workers)


def load_config(path: str | Path) -> ServeConfig:
    """Read and validate a serve.yaml file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the serve config ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{at}: malformed YAML ({getattr(e, 'problem', None) or e})") from None
    return parse_config(data, path.resolve())


def writable_by_others(path: str | Path) -> str | None:
    """A warning if `path` (keys, or a config holding them) may be changed by its group or other users."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return None
    if mode & 0o022:
        who = "group and others" if mode & 0o022 == 0o022 else "group" if mode & 0o020 else "others"
        return f"{path} is writable by {who} (mode {mode & 0o777:o}): they can add a key; chmod go-w {path}"
    return None


def read_key_file(path: str | Path, *, admin: bool = False, prefix: str = "key") -> tuple[ApiKey, ...]:
    """API keys from a file, one a line: the key itself (hashed at once) or `sha256:<hex>`; # comments."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the API key file ({e.strerror or e})") from None
    keys = []
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        sha = _sha(s, f"{path}:{n}") if s.startswith("sha256:") else hash_key(s)
        keys.append(ApiKey(f"{prefix}{len(keys) + 1}", sha, None, None, admin))
    if not keys:
        raise ConfigError(f"{path}: no API key in the file (one key, or sha256:<hex>, per line)")
    return tuple(keys)


def single_route_config(prompt: str | Path, sha256: str, upstream: str, *, name: str = "promptlift",
                        upstream_model: str | None = None, upstream_api_key_env: str | None = None,
                        prompt_embeds: bool = False, embeds_model: str | None = None,
                        keys: tuple[ApiKey, ...] = (), host: str = "127.0.0.1", port: int = 8000,
                        limits: Limits | None = None, log_content: bool = False,
                        answer: str | None = None) -> ServeConfig:
    """The config of `promptlift serve --prompt ...`: one route, its artifact pinned to `sha256`."""
    url, local_model = parse_upstream(upstream)
    if prompt_embeds and url is None:
        raise ConfigError("--prompt-embeds only applies to an HTTP upstream (vLLM with --enable-prompt-embeds)")
    up = Upstream(url=url, model=local_model or upstream_model, api_key_env=upstream_api_key_env,
                  prompt_embeds=prompt_embeds, embeds_model=embeds_model)
    route = Route(_name(name, "--name"), up, {DEFAULT_PROMPT: PromptRef(DEFAULT_PROMPT, Path(prompt), sha256)},
                  answer=parse_answer(answer, "--answer"))
    return ServeConfig((route,), keys, limits or Limits(), log_content, host, port, None)


__all__ = ["Limits", "PromptRef", "Upstream", "Route", "ApiKey", "ServeConfig", "hash_key", "parse_config",
           "load_config", "read_key_file", "single_route_config", "writable_by_others", "parse_upstream",
           "parse_workers", "parse_answer", "PROMPT_HEADER", "DEFAULT_PROMPT", "ANSWERS"]
