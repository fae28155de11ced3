"""OpenAI-style error objects ({"error": {"message", "type", "param", "code"}}) for every failure:
bad requests are 4xx naming what was wrong, and nothing a request does stops the server."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("longmix.serve")


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers  # e.g. Allow on a 405

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _field_path(loc: tuple) -> str | None:
    """pydantic's error location as the request's own path: 'messages.0.content.1.input_audio'.

    Unions add a step naming the member tried ('str', 'list[int]'), and tagged unions the tag,
    which repeats the field after it ('input_audio', 'input_audio'): both are dropped.
    """
    path: list[str] = []
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        part = str(part)
        if part in ("str", "int", "float", "bool") or "[" in part or (path and path[-1] == part):
            continue
        path.append(part)
    return ".".join(path) or None


def _validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    first = max(errors, key=lambda e: len(e.get("loc", ())))  # the most specific
    if first.get("type") == "json_invalid":
        return APIError(400, f"the body is not valid JSON: {first.get('msg')}", code="json_invalid")
    param = _field_path(tuple(first.get("loc", ())))
    if param is None and first.get("type") != "value_error":  # absent, or not a JSON object
        return APIError(400, "the body must be a JSON object (Content-Type: application/json)",
                        code="invalid_body")
    # a value_error of the body as a whole: a rule across fields (prompts x n)
    return APIError(400, f"{param or 'body'}: {first.get('msg')}", param=param,
                    code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), code=code, headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return APIError(500, "internal server error", type="server_error").response()
