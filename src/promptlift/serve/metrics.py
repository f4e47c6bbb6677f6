"""Prometheus metrics of the proxy (text format at GET /metrics), one registry per server.

    promptlift_requests_total{route, endpoint, status}      requests answered
    promptlift_request_duration_seconds{route, endpoint}     latency histogram (to the last byte)
    promptlift_upstream_errors_total{route, kind}            kind: timeout | unavailable | status_5xx |
                                                             status_429 | status_4xx | local
    promptlift_tokens_total{route, kind}                     prompt | completion (as the upstream reports them)
    promptlift_prompt_positions_total{route, unit}           positions the route's prompt put before the users'
                                                             inputs (its instruction, demonstrations, template parts
                                                             and virtual tokens; not the input): unit "tokens" on
                                                             the local upstream, "estimated" (characters / 4) for
                                                             an HTTP upstream, which has no tokenizer here
    promptlift_reloads_total{result}                         ok | error

With `--workers N` the server sets PROMETHEUS_MULTIPROC_DIR (a folder of its run)
before the worker processes start: each writes its values there and /metrics,
whichever worker answers it, sums them over all workers (prometheus_client's
multiprocess mode).
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """The collectors, in their own registry (several servers in one process do not clash)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("promptlift_requests", "Requests answered, by route, endpoint and HTTP status",
                                ["route", "endpoint", "status"], registry=r)
        self.latency = Histogram("promptlift_request_duration_seconds", "Request latency to the last byte",
                                 ["route", "endpoint"], buckets=BUCKETS, registry=r)
        self.upstream_errors = Counter("promptlift_upstream_errors", "Upstream failures, by route and kind",
                                       ["route", "kind"], registry=r)
        self.tokens = Counter("promptlift_tokens", "Tokens reported by the upstream, by route and kind",
                              ["route", "kind"], registry=r)
        self.prompt_positions = Counter("promptlift_prompt_positions", "Positions the route's prompt put before "
                                        "the users' inputs (not the inputs)", ["route", "unit"], registry=r)
        self.reloads = Counter("promptlift_reloads", "Reloads of routes and artifacts", ["result"], registry=r)
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV)  # read by prometheus_client when first imported

    def observe(self, route: str, endpoint: str, status: int, seconds: float, prompt_tokens: int = 0,
                completion_tokens: int = 0, upstream_error: str | None = None, prompt_positions: float = 0.0,
                positions_unit: str = "tokens") -> None:
        self.requests.labels(route, endpoint, str(status)).inc()
        self.latency.labels(route, endpoint).observe(seconds)
        if prompt_tokens:
            self.tokens.labels(route, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self.tokens.labels(route, "completion").inc(completion_tokens)
        if prompt_positions:
            self.prompt_positions.labels(route, positions_unit).inc(prompt_positions)
        if upstream_error:
            self.upstream_errors.labels(route, upstream_error).inc()

    def render(self) -> bytes:
        if self.multiprocess_dir:  # every worker's values, summed
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.multiprocess_dir)
            return generate_latest(registry)
        return generate_latest(self.registry)


__all__ = ["Metrics", "MULTIPROC_ENV"]
