"""Serving metrics through ray.serve.metrics, exported with Ray Serve's own (Prometheus):
requests by path and status, their latency, generated tokens and tokens/s, batch sizes."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workers.serve.engine import StepStats

LATENCY_BOUNDARIES_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]


class ServeMetrics:
    """Created inside a replica (Ray Serve tags each metric with its deployment and replica)."""

    def __init__(self):
        from ray.serve.metrics import Counter, Gauge, Histogram

        self.requests = Counter("longmix_requests", "HTTP requests by path and status code",
                                tag_keys=("path", "status"))
        self.latency = Histogram("longmix_request_latency_s", "Time to the end of the response",
                                 boundaries=LATENCY_BOUNDARIES_S, tag_keys=("path",))
        self.tokens = Counter("longmix_generated_tokens", "Tokens generated")
        self.tokens_per_s = Gauge("longmix_decode_tokens_per_s", "Tokens/s of the latest step")
        self.batch_size = Histogram("longmix_batch_size", "Sequences per decode step",
                                    boundaries=BATCH_BOUNDARIES)

    def on_step(self, stats: StepStats) -> None:
        self.tokens.inc(stats.batch_size)
        self.batch_size.observe(stats.batch_size)
        if stats.seconds > 0:
            self.tokens_per_s.set(stats.batch_size / stats.seconds)

    def on_response(self, path: str, status: int, seconds: float) -> None:
        self.requests.inc(tags={"path": path, "status": str(status)})
        self.latency.observe(seconds, tags={"path": path})


class RequestMetrics:
    """ASGI middleware: one count and one latency per HTTP response (streams included)."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            self.metrics.on_response(scope["path"], status, time.perf_counter() - start)
