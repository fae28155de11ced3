"""Bearer-token auth and the body size limit, before any route runs (ASGI middleware).

Keys are compared in constant time and never logged; the health endpoints and the OpenAPI
schema stay open. A body is refused by its Content-Length when it declares one, and otherwise
counted as it arrives; the app gets it whole.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from workers.serve.errors import APIError

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect"})


def load_api_keys(keys: list[SecretStr], key_file: Path | None) -> list[str]:
    """The configured keys plus one per non-empty line of the key file."""
    found = [k.get_secret_value() for k in keys if k.get_secret_value()]
    if key_file is not None:
        found += [line.strip() for line in key_file.read_text().splitlines() if line.strip()]
    return found


class RequestGuard:
    def __init__(self, app: ASGIApp, api_keys: list[str], max_body_bytes: int):
        if not api_keys:
            raise ValueError("serving needs at least one API key (serve_api_keys or serve_api_key_file)")
        self.app = app
        self.api_keys = [k.encode() for k in api_keys]
        self.max_body_bytes = max_body_bytes

    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        return scheme.lower() == b"bearer" and any(hmac.compare_digest(token.strip(), key)
                                                   for key in self.api_keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # under a route prefix (a blue/green version's app) the path carries the prefix
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        if scope["type"] != "http" or path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if not self.authorized(headers):
            error = APIError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                             code="invalid_api_key")
            await error.response()(scope, receive, send)
            return
        too_large = APIError(413, f"the request body exceeds {self.max_body_bytes} bytes",
                             code="request_too_large")
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await too_large.response()(scope, receive, send)
            return
        body, size = [], 0
        while True:  # read it all here (it is bounded), so an oversize stream never reaches a route
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                await too_large.response()(scope, receive, send)
                return
            body.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay_receive():
            nonlocal replayed
            if replayed:
                return await receive()  # later messages: disconnects, watched by streams
            replayed = True
            return {"type": "http.request", "body": b"".join(body), "more_body": False}

        await self.app(scope, replay_receive, send)
