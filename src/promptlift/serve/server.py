"""Running the app with uvicorn: in the foreground (the CLI), in N worker processes behind one port
(`--workers N`), or in a thread (tests, benchmarks).

Each binds its socket before uvicorn starts, so a test asks for port 0 and
reads the port it got, with no race for a "free" port.

Workers (`run_workers`): the master process reserves the port and starts N
processes (spawned, not forked: each builds its own app and event loop), each
listening on that port with SO_REUSEPORT, so the kernel spreads connections
over them (elsewhere the master's one listening socket is handed to each).
The master forwards SIGHUP to every worker (each reloads, as one server
does); a worker that reloads on POST /admin/reload tells the master, which
sends SIGHUP to the others. SIGINT/SIGTERM to the master: each worker stops
accepting, finishes its requests in flight, exits; then the master. A worker
that dies is started again; workers whose master is gone stop by themselves.
Shared state lives in a temp folder of the run, removed at exit: the rate
limiter's file (`serve.ratelimit.SharedRateLimiter`) and the metrics of
prometheus_client's multiprocess mode (`serve.metrics`).

Slow clients: a connection whose request head is not complete within
`limits.client_header_timeout_s` (from connecting, or from the first byte of a
kept-alive connection's next request) is closed; idle kept-alive connections
close after `limits.keep_alive_timeout_s`; beyond `limits.max_connections`
open connections plus requests in flight, new requests get 503. (The body's
own timeout is the app's: 408.)
"""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import ConfigError
from .config import Limits
from .metrics import MULTIPROC_ENV

REUSEPORT = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")  # balanced only on Linux


def bind(host: str, port: int, *, listen: bool = True, reuseport: bool = False) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port); ConfigError if it cannot be bound.

    listen=False: bound only (reserves the port); reuseport: others may bind it too (SO_REUSEPORT).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP (else Nagle +
    # delayed ACKs add ~40 ms to every response written in two parts)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    if listen:
        sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _HeadTimeoutH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request head is slower than `head_timeout_s`
    (uvicorn itself waits for a half-sent head forever)."""

    head_timeout_s = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_timer = None
        self._head_cycle = None
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._head_cycle = self.cycle
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is self._head_cycle and not self.transport.is_closing():
            self.transport.close()  # still no new request from this connection

    def data_received(self, data: bytes) -> None:
        between = self.cycle is None or self.cycle.response_complete
        if self._head_timer is None and between:  # the first bytes of a kept-alive connection's next request
            self._arm_head_timer()
        super().data_received(data)
        if self._head_timer is not None and self.cycle is not self._head_cycle:  # the head is complete
            self._head_timer.cancel()
            self._head_timer = None

    def connection_lost(self, exc) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)


def _config(app, log_level: str, **kw) -> uvicorn.Config:
    """uvicorn's config, with the slow-client limits of the app's config (`Limits` defaults for other apps)."""
    state = getattr(getattr(app, "state", None), "serve", None)
    limits = state.snapshot.config.limits if state is not None else Limits()
    protocol = type("HeadTimeoutH11", (_HeadTimeoutH11,), {"head_timeout_s": limits.client_header_timeout_s})
    # No uvicorn access log: the app writes its own JSON line per request.
    return uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on", timeout_graceful_shutdown=30,
                          http=protocol, timeout_keep_alive=limits.keep_alive_timeout_s,
                          limit_concurrency=limits.max_connections, **kw)


class ServerThread:
    """Serve `app` on 127.0.0.1 in a daemon thread; a context manager that stops it on exit.

        with ServerThread(app) as srv:
            httpx.get(srv.url + "/health")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 start_timeout_s: float = 30.0):
        self.app = app
        self.host = host
        self.sock = bind(host, port)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(_config(app, log_level))
        self.thread = threading.Thread(target=self._run, name=f"promptlift-serve-{self.port}", daemon=True)
        self.start_timeout_s = start_timeout_s
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self.error = e

    def start(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server on {self.url} did not start: {self.error!r}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)
        if self.thread.is_alive():  # in-flight requests did not finish: force
            self.server.force_exit = True
            self.thread.join(5.0)
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def setup_logging(level: int = logging.INFO) -> None:
    """JSON request lines of `promptlift.serve` to stderr, one per line, nothing else added."""
    logger = logging.getLogger("promptlift.serve")
    if not any(getattr(h, "_promptlift", False) for h in logger.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
        h._promptlift = True  # type: ignore[attr-defined]
        logger.addHandler(h)
    logger.setLevel(level)
    logger.propagate = False


def _freeze_heap() -> None:
    """Move everything loaded so far (torch, the app, artifacts) out of the collector's sight before serving.

    The process holds some 250,000 long-lived objects from its imports (torch among them); without
    this, the cyclic collector walks them all again and again under load (a third of the CPU per
    proxied request on the gateway bench).
    """
    gc.collect()
    gc.freeze()


def run_foreground(app, host: str, port: int, log_level: str = "info",
                   on_listening: Callable[[int], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM (in-flight requests finish first); SIGHUP reloads (see app).

    on_listening(port): called once the socket is bound (port 0 asks for any free port).
    """
    sock = bind(host, port)
    if on_listening:
        on_listening(sock.getsockname()[1])
    server = uvicorn.Server(_config(app, log_level))
    _freeze_heap()
    server.run(sockets=[sock])


# --- worker processes ---------------------------------------------------------------------------


@dataclass
class WorkerContext:
    """What a worker process knows of its server: its index, the master, the run's shared folder."""

    index: int
    master_pid: int
    run_dir: str
    conn: Connection  # to the master

    def tell_master(self, what: str) -> None:
        try:
            self.conn.send((what, self.index))
        except (OSError, ValueError):  # the master is gone: the watcher stops this worker
            pass

    def admin_reloaded(self) -> None:
        """After a reload by POST /admin/reload: the master has the other workers reload too."""
        self.tell_master("reloaded")


class _WorkerServer(uvicorn.Server):
    """A worker stops on SIGTERM from the master; a terminal's Ctrl-C (SIGINT to the whole process group)
    is the master's to handle, so a second signal never cuts the graceful shutdown short."""

    def handle_exit(self, sig, frame) -> None:
        if sig != signal.SIGINT:
            self.should_exit = True


def _watch(server: uvicorn.Server, ctx: WorkerContext) -> None:
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.02)
    ctx.tell_master("ready")
    while not server.should_exit:
        if os.getppid() != ctx.master_pid:  # orphaned: stop (requests in flight finish)
            server.should_exit = True
            return
        time.sleep(0.5)


def _worker_main(make_app: Callable[[WorkerContext], Any], ctx: WorkerContext, host: str, port: int,
                 sock: socket.socket | None, log_level: str) -> None:
    from ..errors import PromptliftError

    try:
        app = make_app(ctx)
        sock = sock if sock is not None else bind(host, port, reuseport=True)
    except PromptliftError as e:
        print(f"promptlift: error: worker {ctx.index}: {e}", file=sys.stderr, flush=True)
        sys.exit(int(getattr(e, "exit_code", 2)))
    server = _WorkerServer(_config(app, log_level))
    threading.Thread(target=_watch, args=(server, ctx), name="promptlift-worker-watch", daemon=True).start()
    _freeze_heap()
    server.run(sockets=[sock])


class _Workers:
    """The master's view: one process and one pipe per worker index."""

    def __init__(self, make_app, n: int, host: str, port: int, sock: socket.socket | None, run_dir: str,
                 log_level: str):
        self.mp = multiprocessing.get_context("spawn")
        self.make_app, self.n, self.host, self.port, self.sock = make_app, n, host, port, sock
        self.run_dir, self.log_level = run_dir, log_level
        self.procs: dict[int, tuple[Any, Connection, float]] = {}

    def start(self, i: int) -> None:
        r, w = self.mp.Pipe(duplex=False)
        ctx = WorkerContext(i, os.getpid(), self.run_dir, w)
        p = self.mp.Process(target=_worker_main, name=f"promptlift-worker-{i}",
                            args=(self.make_app, ctx, self.host, self.port, self.sock, self.log_level))
        p.start()
        w.close()
        self.procs[i] = (p, r, time.monotonic())

    def signal_all(self, sig: int, but: int | None = None) -> None:
        for i, (p, _, _) in self.procs.items():
            if i != but and p.is_alive():
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass

    def events(self, timeout: float) -> list[tuple[str, int, Any]]:
        """("ready" | "reloaded", index, None) messages and ("exited", index, exit code), waiting up to timeout."""
        by = {}
        for i, (p, r, _) in self.procs.items():
            by[r] = by[p.sentinel] = i
        out = []
        for obj in wait(list(by), timeout):
            i = by[obj]
            p, r, _ = self.procs[i]
            if obj is r:
                try:
                    what, _ = r.recv()
                except (EOFError, OSError):
                    continue
                out.append((what, i, None))
            elif not p.is_alive():
                p.join()
                out.append(("exited", i, p.exitcode))
        return out

    def stop(self, timeout: float) -> None:
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p, r, _ in self.procs.values():
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)
            r.close()


def run_workers(make_app: Callable[[WorkerContext], Any], n: int, host: str, port: int, *,
                log_level: str = "info", on_listening: Callable[[int], None] | None = None,
                start_timeout_s: float = 300.0, stop_timeout_s: float = 40.0) -> None:
    """Serve with `n` worker processes on host:port until SIGINT/SIGTERM (see the module docstring).

    make_app(ctx): builds a worker's app in the worker (picklable: a module-level function or object).
    """
    held = bind(host, port, listen=not REUSEPORT, reuseport=REUSEPORT)
    port = held.getsockname()[1]
    run_dir = tempfile.mkdtemp(prefix="promptlift-serve-")
    (Path(run_dir) / "metrics").mkdir()
    old_env = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = str(Path(run_dir) / "metrics")  # the workers inherit it
    flags = {"hup": 0, "stop": False}
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def on_stop(sig, frame):
        flags["stop"] = True

    def on_hup(sig, frame):
        flags["hup"] += 1

    workers = _Workers(make_app, n, host, port, None if REUSEPORT else held, run_dir, log_level)
    try:
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        for i in range(n):
            workers.start(i)
        ready: set[int] = set()
        deadline = time.monotonic() + start_timeout_s
        while len(ready) < n and not flags["stop"]:
            for what, i, code in workers.events(0.2):
                if what == "ready":
                    ready.add(i)
                elif what == "exited":
                    raise ConfigError(f"worker {i} stopped while starting (exit code {code})")
            if time.monotonic() > deadline:
                raise ConfigError(f"the workers did not start in {start_timeout_s:.0f} s")
        if on_listening and not flags["stop"]:
            on_listening(port)
        while not flags["stop"]:
            if flags["hup"]:
                flags["hup"] = 0
                workers.signal_all(signal.SIGHUP)
            for what, i, code in workers.events(0.2):
                if what == "reloaded":
                    workers.signal_all(signal.SIGHUP, but=i)
                elif what == "exited" and not flags["stop"]:
                    started = workers.procs[i][2]
                    _log_master({"event": "worker_exit", "worker": i, "exit_code": code})
                    if time.monotonic() - started < 10.0:
                        raise ConfigError(f"worker {i} stopped {time.monotonic() - started:.0f} s after it started "
                                          f"(exit code {code}); not starting it again")
                    workers.start(i)
    finally:
        workers.stop(stop_timeout_s)
        for sig, h in old.items():
            signal.signal(sig, h)
        held.close()
        if old_env is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = old_env
        shutil.rmtree(run_dir, ignore_errors=True)


def _log_master(d: dict) -> None:
    logging.getLogger("promptlift.serve").info(json.dumps({"ts": round(time.time(), 3), **d}))


__all__ = ["ServerThread", "WorkerContext", "bind", "run_foreground", "run_workers", "setup_logging"]
