"""Server-sent events: text deltas that never run past a stop string, and several sequences'
streams merged in the order their tokens arrive."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

from model.sequence import TokenEvent
from model.tokenizer import EOS_ID, Tokenizer
from workers.serve.errors import APIError

DONE = "data: [DONE]\n\n"


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


class TextDeltas:
    """What a stream may send after each token: text up to the first stop string, holding back an
    ending that could still grow into one, and an incomplete UTF-8 character (shown as U+FFFD)."""

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...]):
        self.tokenizer, self.stop = tokenizer, stop
        self.token_ids: list[int] = []
        self.sent = ""

    def push(self, token_id: int) -> str:
        if token_id != EOS_ID:
            self.token_ids.append(token_id)
        text = self.tokenizer.decode(self.token_ids)
        cut = min((text.index(s) for s in self.stop if s in text), default=len(text))
        safe = text[:cut]
        for s in self.stop:
            for k in range(min(len(s) - 1, len(safe)), 0, -1):
                if safe.endswith(s[:k]):
                    safe = safe[:-k]
                    break
        safe = safe.rstrip("\ufffd")
        return self._advance(safe)

    def finish(self, final_text: str) -> str:
        return self._advance(final_text)

    def _advance(self, text: str) -> str:
        if len(text) <= len(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


async def merge(streams: list[AsyncIterator]) -> AsyncIterator[tuple[int, object]]:
    """(index of the stream, item) as items arrive; an error in one stream ends all of them."""
    queue: asyncio.Queue = asyncio.Queue()
    finished = object()

    async def pump(index: int, stream: AsyncIterator) -> None:
        try:
            async for item in stream:
                await queue.put((index, item))
            await queue.put((index, finished))
        except Exception as error:  # handed to the consumer, which raises it
            await queue.put((index, error))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            index, item = await queue.get()
            if item is finished:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()


async def sse_choices(streams: list[AsyncIterator], tokenizer: Tokenizer, stop: tuple[str, ...],
                      chunk: Callable[[int, str, str | None], dict],
                      usage: Callable[[int], dict] | None) -> AsyncIterator[str]:
    """The events of a streamed response: chunk(choice, text delta, finish_reason) per token with
    new text and once at each choice's end, then usage(completion tokens) if asked, then [DONE].

    The status line is already sent when generation fails: the error goes into the stream.
    """
    deltas = [TextDeltas(tokenizer, stop) for _ in streams]
    completion_tokens = 0
    try:
        async for index, item in merge(streams):
            if isinstance(item, TokenEvent):
                completion_tokens += 1
                if delta := deltas[index].push(item.token_id):
                    yield sse(chunk(index, delta, None))
            else:
                yield sse(chunk(index, deltas[index].finish(item.text), item.finish_reason))
    except Exception as error:
        yield sse(APIError(500, f"generation failed: {error}", type="server_error").body())
    if usage is not None:
        yield sse(usage(completion_tokens))
    yield DONE
