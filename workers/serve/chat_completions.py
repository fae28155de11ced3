"""POST /v1/chat/completions: roles, text/image/audio/video content parts, n choices, logprobs,
streaming as chat.completion.chunk events. A turn ends at <|end|> (or end of sequence)."""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi.responses import StreamingResponse

from model.generate import Generation
from workers.serve.chat import END_OF_TURN, encode_chat
from workers.serve.engine import Engine
from workers.serve.errors import APIError
from workers.serve.loading import ServedModel
from workers.serve.request_params import check_model, sequence_requests
from workers.serve.schemas import (AssistantMessage, ChatChoice, ChatRequest, ChatResponse,
                                   ChoiceLogprobs, TokenLogprob, TopLogprob, Usage)
from workers.serve.streaming import sse, sse_choices
from workers.serve.token_text import TokenText

DEFAULT_MAX_TOKENS = 256  # when the request names none (bounded by what the context leaves)


def _logprobs(gen: Generation, text: TokenText) -> ChoiceLogprobs:
    tops = gen.top_logprobs or [{} for _ in gen.token_ids]
    return ChoiceLogprobs(content=[
        TokenLogprob(token=text.strings[t], logprob=lp, bytes=text.bytes[t], top_logprobs=[
            TopLogprob(token=text.strings[i], logprob=v, bytes=text.bytes[i]) for i, v in top.items()])
        for t, lp, top in zip(gen.token_ids, gen.logprobs, tops)])


async def chat(body: ChatRequest, served: ServedModel, engine: Engine, text: TokenText):
    check_model(body.model, served)
    if body.top_logprobs and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs",
                       code="invalid_value")
    cfg = served.model.cfg
    # decoding images and audio takes CPU time: off the event loop, which serves every request
    ids, media = await asyncio.to_thread(encode_chat, body.messages, served.tokenizer, cfg)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None \
        else body.max_tokens
    if max_tokens is None:
        max_tokens = max(0, min(DEFAULT_MAX_TOKENS, served.context - len(ids)))
    stop = (*body.stop_strings, END_OF_TURN)
    requests = sequence_requests(ids, body, max_tokens, body.top_logprobs or 0, served,
                                 "messages", stop, media)
    reply = dict(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=served.name)
    if body.stream:
        return StreamingResponse(_stream(body, requests, engine, served, stop, reply, len(ids)),
                                 media_type="text/event-stream")
    generations = await asyncio.gather(*(engine.generate(r) for r in requests))
    choices = [ChatChoice(index=i, message=AssistantMessage(content=g.text),
                          logprobs=_logprobs(g, text) if body.logprobs else None,
                          finish_reason=g.finish_reason) for i, g in enumerate(generations)]
    completion_tokens = sum(len(g.token_ids) for g in generations)
    return ChatResponse(**reply, choices=choices, usage=Usage(
        prompt_tokens=len(ids), completion_tokens=completion_tokens,
        total_tokens=len(ids) + completion_tokens))


async def _stream(body: ChatRequest, requests, engine: Engine, served: ServedModel,
                  stop: tuple[str, ...], reply: dict, prompt_tokens: int):
    def chunk(index: int, delta: str, finish_reason: str | None) -> dict:
        return {**reply, "object": "chat.completion.chunk", "choices": [{
            "index": index, "delta": {"content": delta} if delta else {}, "logprobs": None,
            "finish_reason": finish_reason}]}

    def usage(completion_tokens: int) -> dict:
        return {**reply, "object": "chat.completion.chunk", "choices": [], "usage": Usage(
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens).model_dump()}

    for index in range(len(requests)):  # OpenAI's first chunk of each choice names the role
        yield sse({**reply, "object": "chat.completion.chunk", "choices": [{
            "index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
            "finish_reason": None}]})
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    async for event in sse_choices([engine.stream(r) for r in requests], served.tokenizer, stop,
                                   chunk, usage if include_usage else None):
        yield event
