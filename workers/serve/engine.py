"""Continuous batching: concurrent requests share forward passes.

A single loop on the event loop admits waiting sequences at token boundaries (up to the batch
limits), prefills them, samples one token for every running sequence and decodes all of those
still going in one batched forward pass; finished or abandoned sequences leave at once. The model
runs on one worker thread, so the event loop keeps serving HTTP while it computes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from model.encoders import Media
from model.generate import Generation
from model.tokenizer import Tokenizer
from model.transformer import Transformer
from workers.serve.batch_decode import decode_step
from workers.serve.sequence import Sequence, SequenceRequest, TokenEvent


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int = 8  # sequences decoded together
    max_batch_tokens: int = 16384  # KV positions (prompt + max_tokens) the running batch reserves


@dataclass(frozen=True)
class StepStats:
    batch_size: int  # sequences that produced a token (one each) in this step
    seconds: float


@dataclass
class PromptScores:
    """Echo: each prompt token's log-probability given those before it (None for the first)."""

    logprobs: list[float | None]
    top_logprobs: list[dict[int, float] | None]


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, limits: BatchLimits,
                 on_step: Callable[[StepStats], None] | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.limits = limits
        self.on_step = on_step
        self.device = next(model.parameters()).device
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="longmix-engine")
        self._waiting: deque[tuple[Sequence, asyncio.Queue]] = deque()
        self._running: list[tuple[Sequence, asyncio.Queue]] = []
        self._loop_task: asyncio.Task | None = None

    async def stream(self, request: SequenceRequest) -> AsyncIterator[TokenEvent | Generation]:
        """Each token as it is sampled, then the whole Generation."""
        sequence, queue = Sequence(request, self.device), asyncio.Queue()
        self._waiting.append((sequence, queue))
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._run())
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if isinstance(item, Generation):
                    return
        finally:
            sequence.cancelled = True  # a no-op once finished

    async def generate(self, request: SequenceRequest) -> Generation:
        async for item in self.stream(request):
            if isinstance(item, Generation):
                return item
        raise RuntimeError("the engine ended a sequence without its result")

    async def score_prompt(self, ids: list[int], media: Media | None, top_n: int) -> PromptScores:
        """Runs on the engine's thread, between steps, like model.generate.score."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._score_prompt, ids, media, top_n)

    @torch.no_grad()
    def _score_prompt(self, ids: list[int], media: Media | None, top_n: int) -> PromptScores:
        x = torch.tensor([ids], device=self.device)
        logp = self.model(x, media).logits[0, :-1].log_softmax(-1)  # (T-1, V)
        chosen = logp.gather(-1, x[0, 1:, None]).squeeze(-1).tolist()
        tops: list[dict[int, float] | None] = [None]
        if top_n:
            values, indices = logp.topk(top_n, dim=-1)
            tops += [dict(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
        else:
            tops += [{} for _ in chosen]
        return PromptScores([None, *chosen], tops)

    def _admit(self) -> list[tuple[Sequence, asyncio.Queue]]:
        """Waiting sequences that fit beside the running ones, first come first served; one that
        exceeds max_batch_tokens on its own runs alone rather than never."""
        admitted = []
        reserved = sum(s.request.reserved_tokens for s, _ in self._running)
        count = len(self._running)
        while self._waiting and count < self.limits.max_batch_size:
            sequence, queue = self._waiting[0]
            need = sequence.request.reserved_tokens
            if count and reserved + need > self.limits.max_batch_tokens:
                break
            self._waiting.popleft()
            if sequence.cancelled:
                continue
            admitted.append((sequence, queue))
            reserved, count = reserved + need, count + 1
        return admitted

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting or self._running:
                admitted = self._admit()
                running, events = await loop.run_in_executor(self._executor, self._step, admitted)
                self._running = running
                for queue, item in events:
                    queue.put_nowait(item)
        except BaseException as error:  # fail every caller rather than leave them waiting
            for _, queue in [*self._running, *self._waiting]:
                queue.put_nowait(RuntimeError(f"the serving engine stopped: {error!r}"))
            self._running, self._waiting = [], deque()
            raise
        finally:
            self._loop_task = None

    @torch.no_grad()
    def _step(self, admitted):
        """One token boundary: prefill the newcomers, sample a token for every sequence, decode
        the ones still going together. Returns the new running list and (queue, item) events."""
        start = time.perf_counter()
        events: list[tuple[asyncio.Queue, object]] = []
        running = []
        for sequence, queue in admitted:
            try:
                sequence.prefill(self.model)
            except ValueError as error:  # media that do not match their placeholders
                events.append((queue, error))
                continue
            running.append((sequence, queue))
        going = []
        produced = 0
        for sequence, queue in [*self._running, *running]:
            if sequence.cancelled:
                continue
            if sequence.finish_reason is None:
                events.append((queue, sequence.sample(self.tokenizer)))
                produced += 1
            if sequence.finish_reason is not None:
                events.append((queue, sequence.result(self.tokenizer)))
            else:
                going.append((sequence, queue))
        if going:
            logits = decode_step(self.model, [s.last_token for s, _ in going],
                                 [s.cache for s, _ in going])  # (B, V)
            for row, (sequence, _) in enumerate(going):
                sequence.logits = logits[row:row + 1]
        if self.on_step is not None and produced:
            self.on_step(StepStats(produced, time.perf_counter() - start))
        return going, events
