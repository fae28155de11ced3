"""The router of blue/green serving: a light Serve application at "/" that forwards every request
(streams included, headers such as Authorization passed through) to the version that serves now,
and names that version in an `x-longmix-version` response header.

Which version it forwards to is its `user_config`: redeploying the router with a new one only
calls `reconfigure` on the live replica (a lightweight update, no restart), so requests in flight
finish where they started and the next ones go to the new version; none fails.
"""

from __future__ import annotations

import httpx
from ray import serve
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from workers.serve.errors import APIError
from workers.serve.request_guard import body_too_large, read_bounded

ROUTER_APP = "longmix-router"
VERSION_HEADER = "x-longmix-version"
FORWARDED_HEADER = "x-longmix-routed"  # marks what the router sent, so it never loops
# hop-by-hop headers, and those httpx / starlette set for the new hop themselves
DROPPED = {"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
           "proxy-authorization", "proxy-connection", "content-length"}
# the router only waits on the network: a sliver of a CPU, and many requests at once
ROUTER_OPTIONS = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.05},
                  "max_ongoing_requests": 1024}


@serve.deployment(name="LongmixRouter", **ROUTER_OPTIONS)
class Router:
    def __init__(self):
        self.version: str | None = None
        self.upstream: str | None = None  # the version's base URL (its route prefix included)
        self.max_body_bytes = 0  # what it buffers of a body: it forwards before any auth
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0))

    def reconfigure(self, config: dict) -> None:
        """user_config: {"version": "3", "upstream": "http://127.0.0.1:8000/longmix-v3",
        "max_body_bytes": 8388608}."""
        self.version, self.upstream = config["version"], config["upstream"].rstrip("/")
        self.max_body_bytes = config["max_body_bytes"]

    def active_version(self) -> str | None:
        return self.version

    async def __call__(self, request: Request):
        version, upstream = self.version, self.upstream  # one target for the whole request
        if upstream is None:
            return _error(503, "no model version is deployed", "no_deployment")
        if FORWARDED_HEADER in request.headers:  # the version's prefix is gone: the proxy sent
            return _error(502, f"version {version} is not running", "version_gone")  # it back
        path = request.url.path  # Serve gives the full path: the router's prefix is "/"
        url = f"{upstream}{path}" + (f"?{request.url.query}" if request.url.query else "")
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in DROPPED]
        headers.append((FORWARDED_HEADER, version))
        # held whole: the router forwards before the version checks the key
        body = await read_bounded(request.headers.get("content-length", ""), request.stream(),
                                  self.max_body_bytes)
        if body is None:
            return body_too_large(self.max_body_bytes).response()
        try:
            reply = await self.http.send(
                self.http.build_request(request.method, url, headers=headers, content=body),
                stream=True)
        except httpx.TransportError as e:
            return _error(502, f"version {version} unreachable: {type(e).__name__}",
                          "version_unreachable")
        out = {k: v for k, v in reply.headers.items() if k.lower() not in DROPPED}
        out[VERSION_HEADER] = version
        return StreamingResponse(reply.aiter_raw(), status_code=reply.status_code, headers=out,
                                 background=BackgroundTask(reply.aclose))


def _error(status: int, message: str, code: str) -> JSONResponse:
    return APIError(status, message, type="service_unavailable", code=code).response()


def router_config(version: str, upstream: str, max_body_bytes: int) -> dict:
    return {"version": version, "upstream": upstream, "max_body_bytes": max_body_bytes}
