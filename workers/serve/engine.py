"""Continuous batching: concurrent requests share forward passes.

One engine thread runs token boundaries back to back while there is work: it admits waiting
sequences (up to the batch limits), prefills them, samples one token for every running sequence
and decodes all of those still going in one batched forward pass; finished or abandoned sequences
leave at once. Each step's tokens are handed to the requests' event loops without waiting for
them, so the event loop serves HTTP (and formats the streams) while the next step computes, and a
step never waits for the event loop to be scheduled. The thread ends when no work is left and
starts again with the next request.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import torch

from model.batch_decode import BatchKV, decode_rows, prefill_batch
from model.encoders import Media
from model.generate import Generation
from model.sequence import Sequence, SequenceRequest, TokenEvent
from model.tokenizer import Tokenizer
from model.transformer import Transformer


PREFILL_BATCH_TOKENS = 4096  # padded prompt positions one batched prefill may hold


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
        # (sequence, its queue, the queue's event loop); shared with the engine thread under _lock
        self._waiting: deque[tuple[Sequence, asyncio.Queue, asyncio.AbstractEventLoop]] = deque()
        self._jobs: deque[tuple[Callable[[], object], asyncio.Future,
                                asyncio.AbstractEventLoop]] = deque()
        # the engine thread's own
        self._running: list[tuple[Sequence, asyncio.Queue, asyncio.AbstractEventLoop]] = []
        self._kv = BatchKV(model)  # the running sequences' keys and values, a row each (thread's)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _wake(self) -> None:
        """Start the engine thread unless it runs (call with _lock held)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="longmix-engine", daemon=True)
            self._thread.start()

    async def stream(self, request: SequenceRequest) -> AsyncIterator[TokenEvent | Generation]:
        """Each token as it is sampled, then the whole Generation."""
        sequence, queue = Sequence(request, self.device), asyncio.Queue()
        with self._lock:
            self._waiting.append((sequence, queue, asyncio.get_running_loop()))
            self._wake()
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
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            self._jobs.append((lambda: self._score_prompt(ids, media, top_n), future, loop))
            self._wake()
        return await future

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

    def _admit(self) -> list[tuple[Sequence, asyncio.Queue, asyncio.AbstractEventLoop]]:
        """Waiting sequences that fit beside the running ones, first come first served; one that
        exceeds max_batch_tokens on its own runs alone rather than never (call with _lock held)."""
        admitted = []
        reserved = sum(s.request.reserved_tokens for s, _, _ in self._running)
        count = len(self._running)
        while self._waiting and count < self.limits.max_batch_size:
            sequence, queue, loop = self._waiting[0]
            need = sequence.request.reserved_tokens
            if count and reserved + need > self.limits.max_batch_tokens:
                break
            self._waiting.popleft()
            if sequence.cancelled:
                continue
            admitted.append((sequence, queue, loop))
            reserved, count = reserved + need, count + 1
        return admitted

    @staticmethod
    def _deliver(events: list[tuple[asyncio.Queue | asyncio.Future, asyncio.AbstractEventLoop,
                                    object]]) -> None:
        """Hand each step's items to their event loops: one call per loop, without waiting."""
        per_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for target, loop, item in events:
            per_loop.setdefault(loop, []).append((target, item))
        for loop, items in per_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass

    def _run(self) -> None:
        """The engine thread: jobs and token boundaries back to back until no work is left."""
        try:
            while True:
                with self._lock:
                    jobs = list(self._jobs)
                    self._jobs.clear()
                    admitted = self._admit()
                    if not (jobs or admitted or self._running):
                        self._thread = None
                        return
                events: list = []
                for job, future, loop in jobs:
                    try:
                        events.append((future, loop, job()))
                    except Exception as error:  # the caller gets it
                        events.append((future, loop, error))
                if admitted or self._running:
                    self._running, step_events = self._step(admitted)
                    events += step_events
                self._deliver(events)
        except BaseException as error:  # fail every caller rather than leave them waiting
            with self._lock:
                failed = [*self._running, *self._waiting]
                self._running, self._waiting, self._thread = [], deque(), None
            self._deliver([(queue, loop, RuntimeError(f"the serving engine stopped: {error!r}"))
                           for _, queue, loop in failed])
            raise

    @torch.no_grad()
    def _step(self, admitted):
        """One token boundary: prefill the newcomers, sample a token for every sequence, decode
        the ones still going together. Returns the new running list and (queue, loop, item)
        events."""
        start = time.perf_counter()
        events: list[tuple[asyncio.Queue, asyncio.AbstractEventLoop, object]] = []
        running = []
        alone = [entry for entry in admitted if not entry[0].text_only]
        for group in _prefill_groups([entry for entry in admitted if entry[0].text_only]):
            if len(group) == 1:
                alone += group
                continue
            sequences = [sequence for sequence, _, _ in group]
            logits = prefill_batch(self.model, [s.request.prompt_ids for s in sequences],
                                   [s.new_cache(self.model, prompt_only=True)
                                    for s in sequences])  # (B, V)
            for row, sequence in enumerate(sequences):
                sequence.prefilled(logits[row:row + 1])
            running += group
        for sequence, queue, loop in alone:
            try:
                sequence.prefill(self.model, prompt_only=True)  # decoded in the batch's rows
            except ValueError as error:  # media that do not match their placeholders
                events.append((queue, loop, error))
                continue
            running.append((sequence, queue, loop))
        going = []
        kept_rows = []  # rows of the batch's KV that stay, then the newcomers join
        produced = 0
        old = len(self._running)
        for index, (sequence, queue, loop) in enumerate([*self._running, *running]):
            if sequence.cancelled:
                continue
            if sequence.finish_reason is None:
                events.append((queue, loop, sequence.sample(self.tokenizer)))
                produced += 1
            if sequence.finish_reason is not None:
                events.append((queue, loop, sequence.result(self.tokenizer)))
            else:
                going.append((sequence, queue, loop))
                if index < old:
                    kept_rows.append(index)
        self._kv.keep(kept_rows)
        for sequence, _, _ in going[len(kept_rows):]:
            self._kv.add(sequence.cache)
            sequence.cache = None  # its keys and values live in the batch's rows now
        if not going:
            self._kv = BatchKV(self.model)  # idle: let the memory go
        if going:
            logits = decode_rows(self.model, [s.last_token for s, _, _ in going],
                                 self._kv)  # (B, V)
            for row, (sequence, _, _) in enumerate(going):
                sequence.logits = logits[row:row + 1]
        if self.on_step is not None and produced:
            self.on_step(StepStats(produced, time.perf_counter() - start))
        return going, events


def _prefill_groups(entries: list) -> list[list]:
    """Consecutive text-only newcomers in groups whose padded prompts fit PREFILL_BATCH_TOKENS."""
    groups: list[list] = []
    longest = 0
    for entry in entries:
        n = len(entry[0].request.prompt_ids)
        if groups and (len(groups[-1]) + 1) * max(longest, n) <= PREFILL_BATCH_TOKENS:
            groups[-1].append(entry)
            longest = max(longest, n)
        else:
            groups.append([entry])
            longest = n
    return groups


def _put_all(items: list[tuple[asyncio.Queue | asyncio.Future, object]]) -> None:
    """On the event loop: put each item on its queue, or settle its future."""
    for target, item in items:
        if isinstance(target, asyncio.Queue):
            target.put_nowait(item)
        elif not target.done():  # a score_prompt whose caller may have gone away
            if isinstance(item, BaseException):
                target.set_exception(item)
            else:
                target.set_result(item)
