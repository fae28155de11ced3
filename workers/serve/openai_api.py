"""The FastAPI application: the OpenAI routes, health and readiness, auth and limits, metrics.

Built once the model is loaded and warm (the Serve deployment builds it after its warm-up), so
every route it answers is backed by a ready engine.
"""

from __future__ import annotations

from fastapi import FastAPI

from workers.serve.chat_completions import chat
from workers.serve.completions import complete
from workers.serve.engine import Engine
from workers.serve.errors import install_error_handlers
from workers.serve.loading import ServedModel
from workers.serve.metrics import RequestMetrics, ServeMetrics
from workers.serve.request_guard import RequestGuard
from workers.serve.schemas import (ChatRequest, ChatResponse, CompletionRequest,
                                   CompletionResponse, ErrorResponse, ModelCard, ModelList)
from workers.serve.token_text import TokenText

ERRORS = {status: {"model": ErrorResponse, "description": what} for status, what in [
    (400, "invalid request: malformed JSON, a wrong type, a value out of range, undecodable media, "
          "a prompt beyond the context"),
    (401, "missing or invalid API key"), (404, "unknown model"), (413, "body over the size limit")]}
STREAMABLE = {200: {"content": {"text/event-stream": {}},
                    "description": "JSON, or server-sent events ending in `data: [DONE]` with stream"}}


def build_api(served: ServedModel, engine: Engine, api_keys: list[str], max_body_bytes: int,
              metrics: ServeMetrics | None = None) -> FastAPI:
    app = FastAPI(title="longmix", version="1", description=(
        "OpenAI-compatible API of a longmix model: completions (with logprobs and echo), chat with "
        "images, audio and video, streaming. Send `Authorization: Bearer <key>`."))
    install_error_handlers(app)
    app.add_middleware(RequestGuard, api_keys=api_keys, max_body_bytes=max_body_bytes)
    if metrics is not None:
        app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: counts 401s and 413s too
    text = TokenText(served.tokenizer)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the model is loaded, verified and warmed up")
    async def readyz() -> dict[str, str | bool]:
        return {"status": "ready", "model": served.name, "digest": served.digest,
                "approved": served.approved}

    @app.get("/v1/models", response_model=ModelList, responses=ERRORS)
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=served.name, created=served.created)])

    @app.post("/v1/completions", response_model=CompletionResponse,
              responses={**ERRORS, **STREAMABLE})
    async def completions(body: CompletionRequest):
        return await complete(body, served, engine, text)

    @app.post("/v1/chat/completions", response_model=ChatResponse,
              responses={**ERRORS, **STREAMABLE})
    async def chat_completions(body: ChatRequest):
        return await chat(body, served, engine, text)

    return app
