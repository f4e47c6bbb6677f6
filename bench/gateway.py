"""Gateway bench: `promptlift serve` (1 and N workers) beside LiteLLM's proxy, same fake upstream, same load.

    .venv/bin/python bench/gateway.py --litellm .venv-litellm/bin/litellm [--requests 2000] [--clients 50]
                                      [--repeats 3] [--workers 2]

LiteLLM goes in its own virtual environment (never the project's):
    python -m venv .venv-litellm && .venv-litellm/bin/pip install "litellm[proxy]==1.106.12"

One fast fake OpenAI-compatible upstream (bench/loadgen.py's raw asyncio
server, a fixed answer) in its own process; three proxies in front of it, all
running at once and loaded in turn, repeat after repeat (so a load change on
the shared machine hits all alike):
  - `promptlift serve --config` with 1 worker, and with `--workers N`: a text
    prompt with two demonstrations, one API key, no rate limit, JSON request
    log lines to a file;
  - `litellm --config` (1 process): one model routed to the same upstream, a
    master key, request logging off; it gets the messages already rendered.
Each run: `--clients` keep-alive clients send `--requests` chat completions
(bench/loadgen.py's raw client). Measured per run: requests answered (and
errors), requests/s, and the proxy's CPU seconds (user + system of the process
and all its children, /proc) per request. The clients and the upstream share
the machine's cores with the proxy, so requests/s is a lower bound.
"""

from __future__ import annotations

import argparse
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
from loadgen import KEY, cpu_seconds, free_port, load, sentiment_route, stop, wait_http  # noqa: E402


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += cpu_seconds(p)
        except OSError:
            continue
        todo.extend(children.get(p, []))
    return total


def start_promptlift(tmp: Path, up_port: int, workers: int, extra_path: Path | None = None
                     ) -> tuple[subprocess.Popen, int, dict]:
    from promptlift.render import render

    prompt, cfg = sentiment_route(tmp, up_port, workers=workers)
    (tmp / f"serve-{workers}.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    port = free_port()
    log = open(tmp / f"promptlift-{workers}.log", "w")
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen([sys.executable, "-m", "promptlift.cli", "serve", "--config",
                             str(tmp / f"serve-{workers}.yaml"), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=log, cwd=REPO, env=env)
    rendered = render(prompt.instruction, prompt.demos, [{"role": "user", "content": "x"}]).messages()
    return proc, port, {"rendered_prefix": rendered[:-1]}


def start_litellm(tmp: Path, up_port: int, litellm: str) -> tuple[subprocess.Popen, int]:
    cfg = {"model_list": [{"model_name": "sentiment",
                           "litellm_params": {"model": "openai/fake", "api_base": f"http://127.0.0.1:{up_port}/v1",
                                              "api_key": "sk-fake-upstream"}}],
           "general_settings": {"master_key": KEY},
           "litellm_settings": {"turn_off_message_logging": True, "drop_params": True}}
    (tmp / "litellm.yaml").write_text(json.dumps(cfg))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"})
    log = open(tmp / "litellm.log", "w")
    proc = subprocess.Popen([litellm, "--config", str(tmp / "litellm.yaml"), "--port", str(port), "--host",
                             "127.0.0.1", "--num_workers", "1", "--telemetry", "False"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    return proc, port


def litellm_version(litellm: str) -> str:
    py = Path(litellm).parent / "python"
    out = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--litellm", required=True, help="the litellm command of its own virtual environment")
    ap.add_argument("--requests", type=int, default=2000, help="requests per run")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="the promptlift run with several workers")
    ap.add_argument("--out", type=Path, default=BENCHMARKS_MD)
    ap.add_argument("--extra-path", type=Path, default=None,
                    help="prepend this folder to promptlift's PYTHONPATH (e.g. one holding httptools and uvloop, "
                         "which uvicorn then uses)")
    args = ap.parse_args()
    facts = machine_facts()
    progress(f"machine: {facts['cpu']}, {facts['usable_cpus']} usable CPUs, load {facts['loadavg_start']}")
    procs = []
    names = ["promptlift, 1 worker", f"promptlift, {args.workers} workers", "LiteLLM proxy"]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="promptlift-gateway-") as d:
        tmp = Path(d)
        up_port = free_port()
        fake = subprocess.Popen([sys.executable, str(REPO / "bench" / "serve_load.py"), "--fake-upstream",
                                 str(up_port)], stdout=subprocess.PIPE, text=True)
        procs.append(fake)
        try:
            wait_http(up_port, fake, "fake upstream")
            (tmp / "p1").mkdir()
            (tmp / "pN").mkdir()
            p1, port1, info = start_promptlift(tmp / "p1", up_port, 1, args.extra_path)
            procs.append(p1)
            pn, portn, _ = start_promptlift(tmp / "pN", up_port, args.workers, args.extra_path)
            procs.append(pn)
            ll, portl = start_litellm(tmp, up_port, str(Path(args.litellm).resolve()))
            procs.append(ll)
            for port, proc, what in ((port1, p1, names[0]), (portn, pn, names[1]), (portl, ll, names[2])):
                wait_http(port, proc, what, timeout=300)
            body = {"model": "sentiment", "messages": [{"role": "user", "content": "an utterly charming little movie"}],
                    "max_tokens": 4, "temperature": 0}
            rendered = {**body, "messages": info["rendered_prefix"] + body["messages"]}
            if args.workers > 1:
                time.sleep(3.0)  # the workers of pN start after the port answers: let them all listen
            targets = [(names[0], port1, p1, body), (names[1], portn, pn, body), (names[2], portl, ll, rendered)]
            for name, port, proc, b in targets:  # warm-up, not counted
                w = load(port, "/v1/chat/completions", b, args.clients, 300)
                progress(f"warm-up {name}: {w['ok']} ok, {w['errors']} errors {w['error_kinds']}")
            for rep in range(args.repeats):
                for name, port, proc, b in targets:
                    cpu0 = tree_cpu_seconds(proc.pid)
                    r = load(port, "/v1/chat/completions", b, args.clients, args.requests)
                    r["cpu_ms_per_request"] = (tree_cpu_seconds(proc.pid) - cpu0) * 1000 / max(1, r["ok"] + r["errors"])
                    runs[name].append(r)
                    progress(f"repeat {rep + 1} {name}: {r['ok']} ok, {r['errors']} errors {r['error_kinds']}, "
                             f"{r['rps']:.0f} req/s, CPU {r['cpu_ms_per_request']:.2f} ms/request, "
                             f"p50 {r['p50_ms']:.1f} ms")
        finally:
            for p in reversed(procs):
                stop(p)
    version = litellm_version(args.litellm)

    def ms(xs):
        return f"{statistics.fmean(xs):.2f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.2f}"

    def rate(xs):
        return f"{statistics.fmean(xs):.0f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.0f}"

    rows = []
    for name in names:
        rs = runs[name]
        rows.append([name, len(rs), sum(r["ok"] + r["errors"] for r in rs), sum(r["ok"] for r in rs),
                     sum(r["errors"] for r in rs), f"**{ms([r['cpu_ms_per_request'] for r in rs])}**",
                     rate([r["rps"] for r in rs]), ms([r["p50_ms"] for r in rs]), ms([r["p99_ms"] for r in rs])])
    cpu = {n: statistics.fmean(r["cpu_ms_per_request"] for r in runs[n]) for n in names}
    rps = {n: statistics.fmean(r["rps"] for r in runs[n]) for n in names}
    ratio1, ration = cpu[names[0]] / cpu[names[2]], cpu[names[1]] / cpu[names[2]]
    date = now()
    text = [f"## Gateway: `promptlift serve` beside LiteLLM's proxy ({date})",
            "",
            f"Command: `{command_line()}`  ",
            f"Date: {date}  ",
            f"Machine: {facts['cpu']}, {facts['usable_cpus']} usable CPUs, {facts['memory_gib']} GiB RAM; "
            f"Python {facts['python']}; LiteLLM {version} (its own virtual environment). Load average at start "
            f"{facts['loadavg_start']}, at end {loadavg()}: a shared machine; the clients and the fake upstream "
            "run on the same cores as the proxy, so requests/s is a lower bound.",
            "",
            "One fast fake upstream (a fixed chat completion); the three proxies run at once and are loaded in "
            f"turn, {args.repeats} repeats; each run: {args.clients} keep-alive clients, {args.requests} chat "
            "completions, one in flight per client. promptlift: a text prompt with 2 demonstrations, one API key, "
            "no rate limit, a JSON log line per request to a file, pure-Python h11 and asyncio (what pyproject.toml "
            "installs). LiteLLM: one model routed to the same upstream, a master key, message logging off, "
            "`--num_workers 1`, its requests already carrying the rendered messages. CPU = user + system seconds "
            "of the proxy's process and its children (the workers) during the run, per request. Mean ± std over "
            "the repeats.",
            "",
            md_table(["proxy", "runs", "requests", "answered", "errors", "CPU ms / request", "req/s", "p50 ms",
                      "p99 ms"], rows),
            "",
            f"CPU per request, promptlift / LiteLLM: {ratio1:.3f} with 1 worker, {ration:.3f} with {args.workers} "
            f"(target: at most 0.1). Throughput: {rps[names[0]]:.0f} req/s with 1 worker, "
            f"{rps[names[1]]:.0f} with {args.workers} ({rps[names[1]] / rps[names[0]]:.2f}x), LiteLLM "
            f"{rps[names[2]]:.0f}. Several workers buy throughput, not CPU per request: each worker's event loop "
            "wakes for fewer requests at a time, and here the workers, the clients and the upstream share the "
            f"machine's {facts['usable_cpus']} cores."]
    path = write_section("gateway", "\n".join(text), args.out)
    progress(f"wrote {path}")
    print(json.dumps(runs, indent=1, default=str))


if __name__ == "__main__":
    main()
