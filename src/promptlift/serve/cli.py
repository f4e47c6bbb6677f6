"""`promptlift serve`: the command. Importing this module is cheap (the server loads on use).

    promptlift serve --prompt RUN_OR_ARTIFACT [--name NAME] --upstream URL|local[:MODEL]
                     [--host 127.0.0.1] [--port 8000] [--api-key-file FILE] [--admin-key-file FILE]
    promptlift serve --config serve.yaml [--host H] [--port P]

Both check every artifact before listening (a tampered or unknown artifact is
one line on stderr, exit 2) and print what they serve with each artifact's
content hash. With `--prompt`, that hash is pinned: a reload (SIGHUP or
POST /admin/reload) refuses a file that changed since start-up. `--check`
does all the checks, prints the routes and exits without serving.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import ArtifactError, ConfigError


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    device: str = typer.Option("auto", "--device", help="local models: auto | cpu | cuda | cuda:N | mps"),
    dtype: str = typer.Option("auto", "--dtype", help="local models: auto | float32 | bfloat16 | float16"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="local models: torch CPU threads (default: torch's own)"),
    check: bool = typer.Option(False, "--check", help="load and check everything, print the routes, exit"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable start-up lines"),
):
    """Serve learned prompts in front of an LLM: an OpenAI-compatible proxy (chat, completions, streaming)."""
    from .config import load_config, parse_upstream, read_key_file, single_route_config

    if (prompt is None) == (config is None):
        raise ConfigError("give either --prompt RUN_OR_ARTIFACT --upstream URL|local[:MODEL], or --config serve.yaml")
    if config is not None:
        only_prompt = {"--name": name != "promptlift", "--upstream": upstream, "--upstream-model": upstream_model,
                       "--upstream-api-key-env": upstream_api_key_env, "--prompt-embeds": prompt_embeds,
                       "--embeds-model": embeds_model, "--sha256": sha256, "--api-key-file": api_key_file,
                       "--admin-key-file": admin_key_file, "--log-content": log_content}
        extra = [k for k, v in only_prompt.items() if v]
        if extra:
            raise ConfigError(f"{', '.join(extra)} only go with --prompt; with --config put them in {config}")
        cfg = load_config(config)
        reload_config = lambda: load_config(config)  # noqa: E731
    else:
        from ..artifacts import load

        if not upstream:
            raise ConfigError("--prompt needs --upstream URL|local|local:MODEL")
        parse_upstream(upstream)
        artifact = load(prompt)  # checks the hash stored in the file
        if sha256 and artifact.hash != sha256.removeprefix("sha256:"):
            raise ArtifactError(f"{prompt}: content hash {artifact.hash} is not the --sha256 {sha256}")
        keys = read_key_file(api_key_file) if api_key_file else ()
        if admin_key_file:
            keys = keys + read_key_file(admin_key_file, admin=True, prefix="admin")
        cfg = single_route_config(prompt, artifact.hash, upstream, name=name, upstream_model=upstream_model,
                                  upstream_api_key_env=upstream_api_key_env, prompt_embeds=prompt_embeds,
                                  embeds_model=embeds_model, keys=keys, log_content=log_content)
        reload_config = lambda: cfg  # noqa: E731  (the hash printed now stays pinned)
    host = host or cfg.host
    port = cfg.port if port is None else port

    from .routes import Resources, build_snapshot, describe

    def load_model(name: str):
        import torch

        from ..lm.hf import HFModel

        if threads:
            torch.set_num_threads(threads)
        return HFModel(name, device=device, dtype=dtype)

    resources = Resources(load_model=load_model)
    snapshot = build_snapshot(cfg, resources)
    routes = describe(snapshot)
    if as_json:
        typer.echo(json.dumps({"listening": f"http://{host}:{port}", "routes": routes, "keys": len(cfg.keys),
                               "check": check}))
    else:
        for r in routes:
            for pname, info in r["prompts"].items():
                typer.echo(f"route {r['route']}: prompt {pname} ({info['type']}) {info['path']} "
                           f"sha256 {info['sha256']} -> {r['upstream']}")
        if not check:
            typer.echo(f"listening on http://{host}:{port}/v1 ({len(cfg.keys)} API key(s))")
    if not cfg.keys and not _loopback(host):
        typer.echo(f"promptlift: warning: no API keys and {host} is not a loopback address: anyone who can reach "
                   "it can use the routes", err=True)
    if check:
        return
    from .app import build_app
    from .server import run_foreground, setup_logging

    setup_logging()
    app = build_app(snapshot=snapshot, resources=resources, reload_config=reload_config)
    run_foreground(app, host, port)


__all__ = ["serve"]
