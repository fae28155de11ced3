"""Bearer-token auth and the body size limit, before any route runs (ASGI middleware).

Keys are compared in constant time and never logged; the health endpoints and the OpenAPI
schema stay open. A body is refused by its Content-Length when it declares one, and otherwise
counted as it arrives; the app gets it whole.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from pathlib import Path

from pydantic import SecretStr
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from workers.serve.errors import APIError

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect"})


def load_api_keys(keys: list[SecretStr], key_file: Path | None) -> list[str]:
    """The configured keys plus one per non-empty line of the key file."""
    found = [k.get_secret_value() for k in keys if k.get_secret_value()]
    if key_file is not None:
        found += [line.strip() for line in key_file.read_text().splitlines() if line.strip()]
    return found


def body_too_large(limit: int) -> APIError:
    return APIError(413, f"the request body exceeds {limit} bytes", code="request_too_large")


async def read_bounded(declared: str, chunks: AsyncIterator[bytes], limit: int) -> bytes | None:
    """The whole body, or None when it is over `limit` bytes: by its Content-Length when it
    declares one, else counted as it arrives (so an oversize stream is never held whole)."""
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def _received_chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


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
        declared = headers.get(b"content-length", b"").decode("latin-1")
        try:  # read it all here (it is bounded), so an oversize stream never reaches a route
            body = await read_bounded(declared, _received_chunks(receive), self.max_body_bytes)
        except ClientDisconnect:
            return
        if body is None:
            await body_too_large(self.max_body_bytes).response()(scope, receive, send)
            return
        replayed = False

        async def replay_receive():
            nonlocal replayed
            if replayed:
                return await receive()  # later messages: disconnects, watched by streams
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay_receive, send)
