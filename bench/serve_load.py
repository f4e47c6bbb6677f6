"""Load test of `promptlift serve`: the latency the proxy adds, its throughput, errors. Loopback only.

    .venv/bin/python bench/serve_load.py [--requests 5000] [--concurrency 1,50,200] [--local | --no-local]

Part 1, proxy overhead: a fast fake OpenAI-compatible upstream (a raw asyncio
HTTP/1.1 server in its own process, fixed answer) is loaded by N keep-alive
clients, first straight, then through `promptlift serve --config` (the real
command, in its own process, serving a text prompt with two demonstrations,
one API key, JSON request logs written to a file). Added latency = proxied
minus direct, at p50 and p99, per concurrency level. The load generator is a
raw asyncio HTTP client in this process (cheaper than httpx, so the client
costs less of the shared CPUs).

Part 2, local upstream (`--local`, default on): smollm2-135m in-process, 16
different soft prompts; requests/s with 1 client vs 16 concurrent clients
(each its own soft prompt, picked by X-Promptlift-Prompt), with batching
(max_batch 16) and without (max_batch 1).

Everything is bounded: a fixed number of requests per run, a deadline per
run, per-request timeouts; the subprocesses are stopped at the end. Results go
to BENCHMARKS.md (section `serve_load`, dated).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCHMARKS_MD, REPO, command_line, loadavg, machine_facts, md_table, now, progress,  # noqa: E402
                    write_section)
from loadgen import (RUN_DEADLINE_S, cpu_seconds, free_port, load, one_client, run_fake_upstream,  # noqa: E402
                     sentiment_route, stop, wait_http)

def proxy_part(args, tmp: Path) -> tuple[list[list], dict]:
    from promptlift.render import render

    up_port, px_port = free_port(), free_port()
    fake = subprocess.Popen([sys.executable, __file__, "--fake-upstream", str(up_port)], stdout=subprocess.PIPE,
                            text=True)
    prompt, cfg = sentiment_route(tmp, up_port, limits={"requests_per_minute": 0})
    (tmp / "serve.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    log_path = tmp / "requests.log"
    rows, raw = [], {}
    env = dict(os.environ)
    if args.extra_path:
        env["PYTHONPATH"] = os.pathsep.join([str(args.extra_path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with open(log_path, "w") as log:
        proxy = subprocess.Popen([sys.executable, "-m", "promptlift.cli", "serve", "--config", str(tmp / "serve.yaml"),
                                  "--port", str(px_port)], stdout=subprocess.DEVNULL, stderr=log, cwd=REPO, env=env)
    probe_code = "import importlib.util as u; print(*(m for m in ('httptools', 'uvloop') if u.find_spec(m)))"
    probe = subprocess.run([sys.executable, "-c", probe_code], env=env, capture_output=True, text=True).stdout.split()
    raw["uvicorn_extras"] = probe
    body = {"model": "sentiment", "messages": [{"role": "user", "content": "an utterly charming little movie"}],
            "max_tokens": 4, "temperature": 0}
    direct_body = {**body, "model": "fake",
                   "messages": render(prompt.instruction, prompt.demos, body["messages"]).messages()}
    total = 0
    try:
        wait_http(up_port, fake, "fake upstream")
        wait_http(px_port, proxy, "promptlift serve")
        load(up_port, "/v1/chat/completions", direct_body, 20, 500)  # warm-up, not counted
        load(px_port, "/v1/chat/completions", body, 20, 500)
        for c in args.concurrency:
            n = args.requests if c > 1 else max(500, args.requests // 5)
            progress(f"concurrency {c}: {n} requests straight to the fake upstream ...")
            d = load(up_port, "/v1/chat/completions", direct_body, c, n)
            progress(f"  direct: {d['rps']:.0f} req/s, p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms, "
                     f"errors {d['errors']}; through the proxy ...")
            cpu0 = cpu_seconds(proxy.pid)
            p = load(px_port, "/v1/chat/completions", body, c, n)
            p["proxy_cpu_ms_per_request"] = (cpu_seconds(proxy.pid) - cpu0) * 1000 / max(1, p["ok"] + p["errors"])
            progress(f"  proxied: {p['rps']:.0f} req/s, p50 {p['p50_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms, "
                     f"proxy CPU {p['proxy_cpu_ms_per_request']:.2f} ms/request, "
                     f"errors {p['errors']} {p['error_kinds']}")
            total += d["ok"] + d["errors"] + p["ok"] + p["errors"]
            raw[c] = {"direct": d, "proxied": p}
            rows.append([c, n, f"{d['p50_ms']:.2f}", f"{p['p50_ms']:.2f}", f"**{p['p50_ms'] - d['p50_ms']:.2f}**",
                         f"{d['p99_ms']:.2f}", f"{p['p99_ms']:.2f}", f"**{p['p99_ms'] - d['p99_ms']:.2f}**",
                         f"{d['rps']:.0f}", f"{p['rps']:.0f}", f"{p['proxy_cpu_ms_per_request']:.2f}",
                         f"{d['errors']} / {p['errors']}"])
    finally:
        stop(proxy)
        stop(fake)
    lines = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
    req_lines = [x for x in lines if x.get("event") == "request"]
    raw["log_lines"] = len(req_lines)
    raw["log_non_200"] = sum(1 for x in req_lines if x.get("status") != 200)
    raw["total_requests"] = total
    return rows, raw


def local_part(args) -> tuple[list[list], dict]:
    import torch

    from promptlift.artifacts import SoftPrompt
    from promptlift.lm.hf import HFModel
    from promptlift.serve.app import build_app
    from promptlift.serve.config import parse_config
    from promptlift.serve.server import ServerThread

    torch.set_num_threads(args.threads)
    lm = HFModel("smollm2-135m")
    tmp = Path(tempfile.mkdtemp(prefix="promptlift-bench-"))
    g = torch.Generator().manual_seed(0)
    refs = {}
    for i in range(16):
        ids = torch.randint(200, 20000, (8,), generator=g)
        p = SoftPrompt(instruction="Is this review positive or negative?", embeds=lm.embed(ids).detach(),
                       hidden_size=lm.hidden_size, num_layers=lm.num_layers, model=lm.model_id)
        p.save(tmp / f"s{i}")
        refs[f"s{i}"] = {"path": str(tmp / f"s{i}"), "sha256": p.hash}
    default = refs.pop("s0")
    reviews = ["an utterly charming little movie", "a tedious, overlong mess", "the acting is superb",
               "i wanted my money back", "a quiet triumph", "flat characters and a silly plot",
               "funny, warm and wise", "nothing here works", "beautifully shot", "the script is lazy",
               "a joy from start to finish", "painfully slow", "clever and moving", "forgettable",
               "one of the best films of the year", "an embarrassment"]
    rows, raw = [], {}
    for max_batch in (16, 1):
        doc = {"routes": [{"name": "soft", "upstream": "local", "prompt": default["path"],
                           "sha256": default["sha256"], "prompts": refs}],
               "limits": {"requests_per_minute": 0, "max_batch": max_batch, "batch_window_ms": 10}}
        from promptlift.serve.routes import Resources

        app = build_app(parse_config(doc), resources=Resources(lms={lm.model_id: lm}), log_line=lambda d: None)
        with ServerThread(app) as srv:
            port = srv.port
            for clients in (1, 16):
                if clients == 1 and max_batch == 1:
                    continue  # same as max_batch 16 with one client
                n = args.local_requests
                body = {"model": "soft", "max_tokens": 8, "temperature": 0,
                        "messages": [{"role": "user", "content": reviews[0]}]}
                load(port, "/v1/chat/completions", body, 1, 2)  # warm-up
                runner = next(iter(app.state.serve.resources.runners.values()))
                before = len(runner.batches)
                res = _local_load(port, body, clients, n, reviews)
                sizes = runner.batches[before:]
                progress(f"local, max_batch {max_batch}, {clients} client(s): {res['rps']:.2f} req/s, "
                         f"p50 {res['p50_ms']:.0f} ms, errors {res['errors']}, batches {sizes}")
                raw[f"b{max_batch}_c{clients}"] = {**res, "mean_batch": statistics.fmean(sizes) if sizes else 0}
                rows.append([max_batch, clients, n, f"{res['rps']:.2f}", f"{res['p50_ms']:.0f}",
                             f"{res['p99_ms']:.0f}", f"{statistics.fmean(sizes) if sizes else 0:.1f}", res["errors"]])
    return rows, raw


def _reading(raw: dict, levels: list[int]) -> str:
    """What the proxy table says, from the measured numbers."""
    one = raw.get(1)
    busy = [raw[c] for c in levels if c > 1 and c in raw]
    parts = []
    if one:
        d, p = one["direct"], one["proxied"]
        parts.append(f"With one client the proxy adds {p['p50_ms'] - d['p50_ms']:.2f} ms at p50 "
                     f"(target: at most 2 ms).")
    if busy:
        cpu = statistics.fmean(b["proxied"]["proxy_cpu_ms_per_request"] for b in busy)
        top = max(b["proxied"]["rps"] for b in busy)
        parts.append(f"Under 50+ concurrent clients the proxy, one process on one event loop, is CPU-bound: "
                     f"{cpu:.2f} ms of CPU per request (uvicorn + FastAPI + httpx + the prompt), at most "
                     f"{top:.0f} req/s here, so the added latency is mostly queueing (clients / throughput). "
                     "More throughput would take several proxy processes (not measured here).")
    return " ".join(parts)


def _local_load(port: int, body: dict, clients: int, n: int, reviews: list[str]) -> dict:
    """`clients` concurrent clients, client i with soft prompt s{i} and its own review; n requests in all."""
    per = max(1, n // clients)
    results = []

    async def main():
        deadline = time.monotonic() + RUN_DEADLINE_S
        tasks = []
        for i in range(clients):
            b = {**body, "messages": [{"role": "user", "content": reviews[i % len(reviews)]}]}
            data = json.dumps(b).encode()
            req = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
                   f"x-promptlift-prompt: s{i % 16}\r\ncontent-length: {len(data)}\r\n\r\n").encode() + data
            lat, errors = [], []
            results.append((lat, errors))
            if i % 16 == 0:  # s0 is the route's default prompt, not a named one
                req = req.replace(b"x-promptlift-prompt: s0\r\n", b"")
            tasks.append(one_client("127.0.0.1", port, req, [per], lat, errors, deadline))
        await asyncio.gather(*tasks)

    t0 = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - t0
    lat = sorted(x for r in results for x in r[0])
    errors = sum(len(r[1]) for r in results)
    q = (lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000) if lat else (lambda p: float("nan"))
    return {"ok": len(lat), "errors": errors, "wall_s": wall, "rps": len(lat) / wall, "p50_ms": q(0.5),
            "p99_ms": q(0.99)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=5000, help="requests per (concurrency, direct|proxied) run")
    ap.add_argument("--concurrency", default="1,50,200", help="client counts, comma-separated")
    ap.add_argument("--local", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure the local upstream with 16 soft prompts (loads smollm2-135m)")
    ap.add_argument("--local-requests", type=int, default=48, help="requests per local run")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for the local part (more than 1 is much slower on a busy 2-core machine)")
    ap.add_argument("--out", type=Path, default=BENCHMARKS_MD)
    ap.add_argument("--extra-path", type=Path, default=None,
                    help="prepend this folder to the proxy's PYTHONPATH (e.g. one holding httptools and uvloop, "
                         "which uvicorn then uses)")
    ap.add_argument("--fake-upstream", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fake_upstream is not None:
        run_fake_upstream(args.fake_upstream)
        return
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    facts = machine_facts()
    progress(f"machine: {facts['cpu']}, {facts['usable_cpus']} usable CPUs, load {facts['loadavg_start']}")
    with tempfile.TemporaryDirectory(prefix="promptlift-serve-bench-") as d:
        rows, raw = proxy_part(args, Path(d))
    local_rows, local_raw = local_part(args) if args.local else ([], {})
    date = now()
    body = [f"## `promptlift serve`: proxy overhead and local batching ({date})",
            "",
            f"Command: `{command_line()}`  ",
            f"Date: {date}  ",
            f"Machine: {facts['cpu']}, {facts['usable_cpus']} usable CPUs, {facts['memory_gib']} GiB RAM; "
            f"Python {facts['python']}, torch {facts['torch']}. Load average at start {facts['loadavg_start']}, "
            f"at end {loadavg()}: the machine is shared with other work and was loaded during the run, and the "
            "fake upstream, the proxy and the load generator share its CPUs, so these numbers are upper bounds "
            "on latency and lower bounds on throughput.",
            "",
            "### Proxy overhead (fake upstream, loopback)",
            "",
            "A raw asyncio fake upstream answers a fixed chat completion. `direct`: clients to the fake upstream "
            "with the already-rendered messages; `proxied`: clients to `promptlift serve --config` (the real "
            "command: bearer-key check, rate limiter, text prompt with 2 demonstrations rendered by "
            "`promptlift.render`, httpx connection pool to the upstream, Prometheus metrics, one JSON log line "
            "per request to a file). Keep-alive connections, one request in flight per client. "
            "Latencies in ms; added = proxied - direct. uvicorn's HTTP parser and event loop in the proxy: "
            + (f"{' and '.join(raw['uvicorn_extras'])} (from `--extra-path`)" if raw["uvicorn_extras"]
               else "pure-Python h11 and asyncio (what pyproject.toml installs; no httptools/uvloop)") + ".",
            "",
            md_table(["clients", "requests", "p50 direct", "p50 proxied", "p50 added", "p99 direct", "p99 proxied",
                      "p99 added", "req/s direct", "req/s proxied", "proxy CPU ms / request",
                      "errors direct / proxied"], rows),
            "",
            f"Requests in all: {raw['total_requests']} (plus 1000 warm-up). JSON log lines written by the proxy: "
            f"{raw['log_lines']} (one per proxied request, warm-up included), {raw['log_non_200']} of them not 200.",
            "",
            _reading(raw, args.concurrency),
            ]
    if local_rows:
        body += ["",
                 "### Local upstream: 16 different soft prompts, batched",
                 "",
                 "smollm2-135m in-process (fp32, CPU, "
                 f"{args.threads} torch thread(s)), 16 soft prompts of 8 vectors each, greedy, max_tokens 8; "
                 f"client i uses soft prompt i (X-Promptlift-Prompt) and its own review; {args.local_requests} "
                 "requests per run. `max_batch 1` turns batching off. Each soft prompt's constant prefix "
                 "(header, vectors, instruction) is computed once and kept (`serve.local.PrefixCache`); a batch "
                 "decodes all rows together, each attending to its own prefix.",
                 "",
                 md_table(["max_batch", "clients", "requests", "req/s", "p50 ms", "p99 ms", "mean batch size",
                           "errors"], local_rows)]
        b16, b1 = local_raw.get("b16_c16"), local_raw.get("b1_c16")
        one = local_raw.get("b16_c1")
        if b16 and b1 and one:
            body += ["", f"16 clients with batching: {b16['rps'] / one['rps']:.2f}x the requests/s of 1 client, "
                         f"{b16['rps'] / b1['rps']:.2f}x those of 16 clients without batching."]
    path = write_section("serve_load", "\n".join(body), args.out)
    progress(f"wrote {path}")
    print(json.dumps({"proxy": raw, "local": local_raw}, indent=1, default=str))


if __name__ == "__main__":
    main()
