"""HTTP load helpers shared by the serving benches (`serve_load.py`, `gateway.py`): a fake OpenAI-compatible
upstream (raw asyncio HTTP/1.1, keep-alive, one fixed answer), a raw asyncio load generator, and the
processes around them (free port, wait until listening, CPU seconds, stop). Loopback only."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import time
from pathlib import Path

KEY = "sk-bench-key"
RUN_DEADLINE_S = 180.0
REQ_TIMEOUT_S = 30.0

ANSWER = json.dumps({"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake",
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": "positive"}}],
                     "usage": {"prompt_tokens": 42, "completion_tokens": 1, "total_tokens": 43}}).encode()



def sentiment_route(tmp: Path, up_port: int, limits: dict | None = None, **top) -> tuple:
    """The serving benches' proxy set-up: a text prompt with 2 demonstrations saved to `tmp/prompt`, and a
    serve.yaml config (dict) with one route `sentiment` to the fake upstream on `up_port`, one key (KEY), the
    given `limits` (upstream_max_connections 512 by default) and top-level fields. Returns (prompt, config)."""
    from promptlift.artifacts import TextPrompt
    from promptlift.serve.config import hash_key
    from promptlift.task import Example

    prompt = TextPrompt(instruction="Classify the sentiment of the review as positive or negative.",
                        demos=[Example("a wonderful, moving film", "positive"),
                               Example("dull and far too long", "negative")])
    prompt.save(tmp / "prompt")
    cfg = {"routes": [{"name": "sentiment", "upstream": f"http://127.0.0.1:{up_port}/v1", "upstream_model": "fake",
                       "prompt": str(tmp / "prompt"), "sha256": prompt.hash}],
           "keys": [{"name": "bench", "sha256": hash_key(KEY)}], **top,
           "limits": {"upstream_max_connections": 512, **(limits or {})}}
    return prompt, cfg


# --- the fake upstream: raw asyncio HTTP/1.1, keep-alive, one fixed answer -----------------------------


class _FakeProtocol(asyncio.Protocol):
    response = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(ANSWER)).encode() + b"\r\n\r\n" + ANSWER)

    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            length = 0
            for line in self.buf[:head_end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            end = head_end + 4 + length
            if len(self.buf) < end:
                return
            self.buf = self.buf[end:]
            self.transport.write(self.response)


def run_fake_upstream(port: int) -> None:
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_FakeProtocol, "127.0.0.1", port, backlog=4096)
        print("ready", flush=True)
        async with server:
            await asyncio.sleep(RUN_DEADLINE_S * 10)  # stops by itself even if the parent dies

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


# --- the load generator: raw asyncio HTTP/1.1 client ----------------------------------------------------


async def one_client(host, port, request: bytes, todo: list, lat: list, errors: list, deadline: float):
    reader = writer = None
    while todo[0] > 0 and time.monotonic() < deadline:
        todo[0] -= 1
        t0 = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), REQ_TIMEOUT_S)
            writer.write(request)
            status = await asyncio.wait_for(_read_response(reader), REQ_TIMEOUT_S)
            if status != 200:
                errors.append(status)
            else:
                lat.append(time.perf_counter() - t0)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            errors.append(type(e).__name__)
            if writer is not None:
                writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _read_response(reader) -> int:
    status = int((await reader.readline()).split()[1])
    length, chunked = 0, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readline()).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(length)
    return status


def load(port: int, path: str, body: dict, clients: int, requests: int, headers: dict | None = None) -> dict:
    """`requests` POSTs by `clients` concurrent keep-alive connections: latencies, errors, requests/s."""
    data = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
               f"authorization: Bearer {KEY}\r\n{extra}content-length: {len(data)}\r\n\r\n").encode() + data
    todo, lat, errors = [requests], [], []

    async def main():
        deadline = time.monotonic() + RUN_DEADLINE_S
        await asyncio.gather(*[one_client("127.0.0.1", port, request, todo, lat, errors, deadline)
                               for _ in range(clients)])

    t0 = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - t0
    lat.sort()
    q = (lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000) if lat else (lambda p: float("nan"))
    return {"clients": clients, "ok": len(lat), "errors": len(errors), "error_kinds": sorted(set(map(str, errors))),
            "wall_s": wall, "rps": len(lat) / wall if wall else 0.0, "p50_ms": q(0.50), "p90_ms": q(0.90),
            "p99_ms": q(0.99), "mean_ms": statistics.fmean(lat) * 1000 if lat else float("nan")}


# --- processes --------------------------------------------------------------------------------------


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_http(port: int, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not start in {timeout:.0f} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
