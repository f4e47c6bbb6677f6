"""Running the app with uvicorn: in the foreground (the CLI) or in a thread (tests, benchmarks).

Both bind the socket themselves before uvicorn starts, so a test asks for port
0 and reads the port it got, with no race for a "free" port.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time

import uvicorn

from ..errors import ConfigError


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port); ConfigError if it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP (else Nagle +
    # delayed ACKs add ~40 ms to every response written in two parts)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _config(app, log_level: str, **kw) -> uvicorn.Config:
    # No uvicorn access log: the app writes its own JSON line per request.
    return uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on", timeout_graceful_shutdown=30,
                          **kw)


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


def run_foreground(app, host: str, port: int, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM (in-flight requests finish first); SIGHUP reloads (see app)."""
    sock = bind(host, port)
    server = uvicorn.Server(_config(app, log_level))
    server.run(sockets=[sock])


__all__ = ["ServerThread", "bind", "run_foreground", "setup_logging"]
