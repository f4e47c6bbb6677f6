"""`promptlift serve`: the command. Importing this module is cheap (the server loads on use).

    promptlift serve --prompt RUN_OR_ARTIFACT [--name NAME] --upstream URL|local[:MODEL]
                     [--host 127.0.0.1] [--port 8000] [--api-key-file FILE] [--admin-key-file FILE]
                     [--requests-per-minute N] [--workers N|auto]
    promptlift serve --config serve.yaml [--host H] [--port P] [--workers N|auto]

Both check every artifact before listening (a tampered or unknown artifact is
one line on stderr, exit 2) and print what they serve with each artifact's
content hash. With `--prompt`, that hash is pinned: a reload (SIGHUP or
POST /admin/reload) refuses a file that changed since start-up. `--check`
does all the checks, prints the routes and exits without serving. The
start-up lines also name every limit in force (none is added that the
config does not set: no rate limit unless configured). `--workers N` runs N
server processes behind the one port (`serve.server.run_workers`): rate limits
and /metrics are shared by them, a reload reaches all of them.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from ..errors import ArtifactError, ConfigError


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ModelLoader:
    """Loads a local model by name with the command's device options (picklable: workers get it)."""

    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None

    def __call__(self, name: str):
        import torch

        from ..lm.hf import HFModel

        if self.threads:
            torch.set_num_threads(self.threads)
        return HFModel(name, device=self.device, dtype=self.dtype)


@dataclass(frozen=True)
class ConfigFile:
    """A reload re-reads serve.yaml."""

    path: Path

    def __call__(self):
        from .config import load_config

        return load_config(self.path)


def read_keys(api_key_file: Path | None, admin_key_file: Path | None) -> tuple:
    """The keys of `--api-key-file` and `--admin-key-file` (either may be None)."""
    from .config import read_key_file

    keys = read_key_file(api_key_file) if api_key_file else ()
    if admin_key_file:
        keys = keys + read_key_file(admin_key_file, admin=True, prefix="admin")
    return keys


@dataclass(frozen=True)
class Pinned:
    """A reload keeps the `--prompt` config (its artifact hash stays pinned; the artifact is re-read) and
    re-reads the key files (a key taken out of them stops working)."""

    config: Any
    api_key_file: Path | None = None
    admin_key_file: Path | None = None

    def __call__(self):
        if self.api_key_file is None and self.admin_key_file is None:
            return self.config
        return dataclasses.replace(self.config, keys=read_keys(self.api_key_file, self.admin_key_file))


@dataclass(frozen=True)
class WorkerApp:
    """Builds one worker's app, in the worker process (`run_workers` pickles it to each)."""

    config: Any
    reload_config: Callable[[], Any]
    load_model: ModelLoader

    def __call__(self, ctx):
        from .app import build_app
        from .ratelimit import SharedRateLimiter
        from .routes import Resources, build_snapshot
        from .server import setup_logging

        setup_logging()
        resources = Resources(load_model=self.load_model)
        snapshot = build_snapshot(self.config, resources)
        return build_app(snapshot=snapshot, resources=resources, reload_config=self.reload_config,
                         limiter=SharedRateLimiter(Path(ctx.run_dir) / "ratelimit.sqlite"),
                         on_admin_reload=ctx.admin_reloaded, log_line=functools.partial(_worker_log, ctx.index))


def _worker_log(index: int, d: dict) -> None:
    """A worker's JSON log line names the worker."""
    log = logging.getLogger("promptlift.serve")
    if log.isEnabledFor(logging.INFO):
        d["worker"] = index
        log.info(json.dumps(d, ensure_ascii=False, default=str))


def limits_in_force(cfg) -> dict:
    """Every limit the server applies, by name: serve.yaml's `limits` (0 = off for the rate limit), each
    route's own max_tokens cap and each key's own requests_per_minute."""
    from dataclasses import asdict

    out: dict = asdict(cfg.limits)
    caps = {r.name: r.max_tokens for r in cfg.routes if r.max_tokens is not None}
    rpm = {k.name: k.requests_per_minute for k in cfg.keys if k.requests_per_minute is not None}
    if caps:
        out["max_tokens_by_route"] = caps
    if rpm:
        out["requests_per_minute_by_key"] = rpm
    return out


def limit_lines(cfg) -> list[str]:
    """The start-up lines naming every limit in force (see `limits_in_force`)."""
    d = limits_in_force(cfg)
    by_route, by_key = d.pop("max_tokens_by_route", {}), d.pop("requests_per_minute_by_key", {})
    rpm = d.pop("requests_per_minute")
    lines = ["rate limit: " + (f"{rpm} requests per minute per key" if rpm else "none")
             + "".join(f"; key {k}: {'none' if v == 0 else f'{v} per minute'}" for k, v in by_key.items()),
             "limits: " + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())
             + "".join(f"; route {r}: max_tokens {v}" for r, v in by_route.items())]
    return lines


def serve(
    prompt: Optional[str] = typer.Option(None, "--prompt", help="a run directory or prompt.json to serve as one route"),
    name: str = typer.Option("promptlift", "--name", help="--prompt: the route's public model name"),
    upstream: Optional[str] = typer.Option(None, "--upstream",
                                           help="--prompt: an OpenAI-compatible base URL (http://HOST:PORT/v1), "
                                                "'local' (the model the prompt was made on) or 'local:MODEL'"),
    upstream_model: Optional[str] = typer.Option(None, "--upstream-model",
                                                 help="--prompt: the model name sent upstream (default: --name)"),
    upstream_api_key_env: Optional[str] = typer.Option(
        None, "--upstream-api-key-env", help="--prompt: environment variable holding the upstream's key"),
    prompt_embeds: bool = typer.Option(False, "--prompt-embeds",
                                       help="--prompt: the upstream is vLLM with --enable-prompt-embeds; "
                                            "a soft prompt is sent as input embeddings"),
    embeds_model: Optional[str] = typer.Option(None, "--embeds-model",
                                               help="--prompt-embeds: local copy of the upstream's model "
                                                    "(default: the model the prompt was made on)"),
    sha256: Optional[str] = typer.Option(None, "--sha256", help="--prompt: refuse to start unless the artifact "
                                                                "has this content hash"),
    config: Optional[Path] = typer.Option(None, "--config", help="serve.yaml: routes, keys, limits "
                                                                 "(see examples/serve.yaml)"),
    host: Optional[str] = typer.Option(None, "--host", help="address to listen on (default 127.0.0.1)"),
    port: Optional[int] = typer.Option(None, "--port", help="port to listen on (default 8000)"),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file",
                                                help="--prompt: client keys, one a line (the key or sha256:HEX); "
                                                     "without it the route is open"),
    admin_key_file: Optional[Path] = typer.Option(None, "--admin-key-file",
                                                  help="--prompt: keys that may POST /admin/reload"),
    log_content: bool = typer.Option(False, "--log-content", help="--prompt: log messages and answers"),
    requests_per_minute: int = typer.Option(0, "--requests-per-minute", min=0,
                                            help="--prompt: per-key (or per-address) rate limit; 0 = none"),
    workers: Optional[str] = typer.Option(None, "--workers",
                                          help="server processes behind the port: N or auto (the usable cores); "
                                               "default 1, or serve.yaml's workers"),
    answer: Optional[str] = typer.Option(None, "--answer",
                                         help="--prompt: label (answer with the label eval predicts; the default "
                                              "for a classifier's artifact) | generate (free generation)"),
    device: str = typer.Option("auto", "--device", help="local models: auto | cpu | cuda | cuda:N | mps"),
    dtype: str = typer.Option("auto", "--dtype", help="local models: auto | float32 | bfloat16 | float16"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="local models: torch CPU threads (default: torch's own)"),
    check: bool = typer.Option(False, "--check", help="load and check everything, print the routes, exit"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable start-up lines"),
):
    """Serve learned prompts in front of an LLM: an OpenAI-compatible proxy (chat, completions, streaming)."""
    from .config import (Limits, load_config, parse_upstream, parse_workers, single_route_config,
                         writable_by_others)

    if (prompt is None) == (config is None):
        raise ConfigError("give either --prompt RUN_OR_ARTIFACT --upstream URL|local[:MODEL], or --config serve.yaml")
    if config is not None:
        only_prompt = {"--name": name != "promptlift", "--upstream": upstream, "--upstream-model": upstream_model,
                       "--upstream-api-key-env": upstream_api_key_env, "--prompt-embeds": prompt_embeds,
                       "--embeds-model": embeds_model, "--sha256": sha256, "--api-key-file": api_key_file,
                       "--admin-key-file": admin_key_file, "--log-content": log_content,
                       "--requests-per-minute": requests_per_minute, "--answer": answer}
        extra = [k for k, v in only_prompt.items() if v]
        if extra:
            raise ConfigError(f"{', '.join(extra)} only go with --prompt; with --config put them in {config}")
        cfg = load_config(config)
        reload_config = ConfigFile(config)
    else:
        from ..artifacts import load

        if not upstream:
            raise ConfigError("--prompt needs --upstream URL|local|local:MODEL")
        parse_upstream(upstream)
        artifact = load(prompt)  # checks the hash stored in the file
        if sha256 and artifact.hash != sha256.removeprefix("sha256:"):
            raise ArtifactError(f"{prompt}: content hash {artifact.hash} is not the --sha256 {sha256}")
        keys = read_keys(api_key_file, admin_key_file)
        cfg = single_route_config(prompt, artifact.hash, upstream, name=name, upstream_model=upstream_model,
                                  upstream_api_key_env=upstream_api_key_env, prompt_embeds=prompt_embeds,
                                  embeds_model=embeds_model, keys=keys, log_content=log_content,
                                  limits=Limits(requests_per_minute=requests_per_minute), answer=answer)
        reload_config = Pinned(cfg, api_key_file, admin_key_file)  # the hash printed now stays pinned
    for f in (config, api_key_file, admin_key_file):
        if f is not None and (warning := writable_by_others(f)):
            typer.echo(f"promptlift: warning: {warning}", err=True)
    host = host or cfg.host
    port = cfg.port if port is None else port
    n_workers = cfg.workers if workers is None else parse_workers(workers, "--workers")

    from .routes import Resources, build_snapshot, describe

    load_model = ModelLoader(device, dtype, threads)
    resources = Resources(load_model=load_model)
    snapshot = build_snapshot(cfg, resources)  # every artifact checked before anything listens
    routes = describe(snapshot)

    def announce(bound_port: int) -> None:
        if as_json:
            typer.echo(json.dumps({"listening": f"http://{host}:{bound_port}", "routes": routes,
                                   "keys": len(cfg.keys), "limits": limits_in_force(cfg), "workers": n_workers,
                                   "check": check}))
        elif not check:
            typer.echo(f"listening on http://{host}:{bound_port}/v1 ({len(cfg.keys)} API key(s), "
                       f"{n_workers} worker(s))")

    if not as_json:
        for r in routes:
            for pname, info in r["prompts"].items():
                typer.echo(f"route {r['route']}: prompt {pname} ({info['type']}, answers: {info['answer']}) "
                           f"{info['path']} sha256 {info['sha256']} -> {r['upstream']}")
        for line in limit_lines(cfg):
            typer.echo(line)
    if not cfg.keys and not _loopback(host):
        typer.echo(f"promptlift: warning: no API keys and {host} is not a loopback address: anyone who can reach "
                   "it can use the routes", err=True)
    if check:
        announce(port)
        return
    from .server import run_foreground, run_workers, setup_logging

    setup_logging()
    if n_workers > 1:  # each worker builds its own routes from the checked config
        del snapshot, resources
        run_workers(WorkerApp(cfg, reload_config, load_model), n_workers, host, port, on_listening=announce)
        return
    from .app import build_app

    app = build_app(snapshot=snapshot, resources=resources, reload_config=reload_config)
    run_foreground(app, host, port, on_listening=announce)


__all__ = ["serve", "WorkerApp", "limit_lines", "limits_in_force"]
