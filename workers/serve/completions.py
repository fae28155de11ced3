"""POST /v1/completions: text, texts or token-id prompts; n choices each; logprobs and echo laid
out as lm-evaluation-harness's local-completions reads them; streaming."""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi.responses import StreamingResponse

from model.generate import Generation
from workers.serve.engine import Engine, PromptScores
from workers.serve.errors import APIError
from workers.serve.loading import ServedModel
from workers.serve.request_params import check_model, prompt_token_ids, sequence_requests
from workers.serve.schemas import (CompletionChoice, CompletionLogprobs, CompletionRequest,
                                   CompletionResponse, Usage)
from workers.serve.streaming import sse_choices
from workers.serve.token_text import TokenText


def _logprobs(prompt: list[int], scores: PromptScores | None, gen: Generation,
              text: TokenText) -> CompletionLogprobs:
    """With echo the prompt's tokens come first (the first has null log-probability), then every
    generated token; top_logprobs maps token text to log-probability."""
    ids = (prompt if scores else []) + gen.token_ids
    generated_tops = gen.top_logprobs or [{} for _ in gen.token_ids]
    tops = (scores.top_logprobs if scores else []) + generated_tops
    return CompletionLogprobs(tokens=text.tokens(ids),
                              token_logprobs=(scores.logprobs if scores else []) + gen.logprobs,
                              top_logprobs=[text.named(t) for t in tops],
                              text_offset=text.offsets(ids))


async def complete(body: CompletionRequest, served: ServedModel, engine: Engine,
                   text: TokenText):
    check_model(body.model, served)
    if body.echo and body.stream:
        raise APIError(400, "echo is not supported with stream", param="echo", code="unsupported")
    prompts = prompt_token_ids(body.prompt, served.tokenizer)
    top_n = body.logprobs or 0
    per_prompt = [sequence_requests(ids, body, body.max_tokens, top_n, served, "prompt",
                                    body.stop_strings) for ids in prompts]
    requests = [r for group in per_prompt for r in group]  # choice index = prompt * n + j
    reply = dict(id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=served.name)
    usage_prompt = sum(len(ids) for ids in prompts)
    if body.stream:
        def chunk(index: int, delta: str, finish_reason: str | None) -> dict:
            return {**reply, "object": "text_completion", "choices": [
                {"index": index, "text": delta, "logprobs": None, "finish_reason": finish_reason}]}

        def usage(completion_tokens: int) -> dict:
            return {**reply, "object": "text_completion", "choices": [], "usage": Usage(
                prompt_tokens=usage_prompt, completion_tokens=completion_tokens,
                total_tokens=usage_prompt + completion_tokens).model_dump()}

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = sse_choices([engine.stream(r) for r in requests], served.tokenizer,
                             body.stop_strings, chunk, usage if include_usage else None)
        return StreamingResponse(events, media_type="text/event-stream")

    generations = await asyncio.gather(*(engine.generate(r) for r in requests))
    scores: list[PromptScores | None] = [None] * len(prompts)
    if body.echo and body.logprobs is not None:
        scores = await asyncio.gather(*(engine.score_prompt(ids, None, top_n) for ids in prompts))
    choices = []
    for index, gen in enumerate(generations):
        p = index // body.n
        echoed = served.tokenizer.decode(prompts[p]) if body.echo else ""
        logprobs = None if body.logprobs is None else _logprobs(prompts[p], scores[p], gen, text)
        choices.append(CompletionChoice(index=index, text=echoed + gen.text, logprobs=logprobs,
                                        finish_reason=gen.finish_reason))
    completion_tokens = sum(len(g.token_ids) for g in generations)
    return CompletionResponse(**reply, choices=choices, usage=Usage(
        prompt_tokens=usage_prompt, completion_tokens=completion_tokens,
        total_tokens=usage_prompt + completion_tokens))
