"""One request's sequence inside the running batch: its KV cache, sampler and output so far.

Each step follows model.generate.generate exactly (never-generated ids masked, log-probabilities
before temperature/top-p, end of sequence and stop strings), so a batched run gives the tokens of
a single-sequence one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from model.attention import KVCache
from model.encoders import Media
from model.generate import Generation, SamplingParams, prefill, sample_next
from model.tokenizer import EOS_ID, NEVER_GENERATED_IDS, PLACEHOLDER_IDS, Tokenizer
from model.transformer import Transformer


_PLACEHOLDERS = frozenset(PLACEHOLDER_IDS.values())


@dataclass
class SequenceRequest:
    prompt_ids: list[int]
    params: SamplingParams
    media: Media | None = None
    top_logprobs: int = 0  # the N most likely tokens (with log-probabilities) at each step

    @property
    def reserved_tokens(self) -> int:
        """KV positions this sequence may fill: its prompt and every token it may generate."""
        return len(self.prompt_ids) + self.params.max_new_tokens


@dataclass
class TokenEvent:
    """One generated token, as soon as it is sampled (for streaming)."""

    token_id: int
    logprob: float
    top_logprobs: dict[int, float] = field(default_factory=dict)


class Sequence:
    def __init__(self, request: SequenceRequest, device: torch.device | str):
        self.request = request
        params = request.params
        self.generator = None
        if params.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(params.seed)
        self.cache: KVCache | None = None
        self.logits: torch.Tensor | None = None  # (1, V) for the next token
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.tops: list[dict[int, float]] = []
        self.finish_reason: str | None = None
        self.stop_at: int | None = None  # where a stop string begins in the decoded text
        self.cancelled = False  # the client went away; dropped at the next token boundary

    @property
    def text_only(self) -> bool:
        """A prompt without media that fits one prefill chunk: it may share a batched prefill."""
        request = self.request
        return (not request.media and len(request.prompt_ids) <= request.params.prefill_chunk
                and not _PLACEHOLDERS.intersection(request.prompt_ids))

    def new_cache(self, model: Transformer, prompt_only: bool = False) -> KVCache:
        """An empty KV cache for the prompt and every token this sequence may generate; or for
        the prompt only, when the sequence decodes in a batch's own storage (the engine's)."""
        weight = next(model.parameters())
        length = len(self.request.prompt_ids) if prompt_only else self.request.reserved_tokens
        self.cache = KVCache(model.cfg, 1, length, dtype=weight.dtype, device=weight.device)
        return self.cache

    def prefill(self, model: Transformer, prompt_only: bool = False) -> None:
        params, ids = self.request.params, self.request.prompt_ids
        self.new_cache(model, prompt_only)
        prompt = torch.tensor([ids], device=self.cache.keys[0].device)
        self.prefilled(prefill(model, prompt, self.cache, params.prefill_chunk, self.request.media))

    def prefilled(self, logits: torch.Tensor) -> None:
        """The prompt is in the cache; logits (1, V) are those of the first token to generate."""
        self.logits = logits
        if self.request.params.max_new_tokens == 0:
            self.finish_reason = "length"

    def sample(self, tokenizer: Tokenizer) -> TokenEvent:
        """Choose the next token from `logits`; sets finish_reason when the sequence ends."""
        params, logits = self.request.params, self.logits
        logits[:, NEVER_GENERATED_IDS] = float("-inf")
        logp = logits.log_softmax(-1)  # (1, V)
        token = int(sample_next(logits, params.temperature, params.top_p, self.generator))
        self.token_ids.append(token)
        self.logprobs.append(float(logp[0, token]))
        top: dict[int, float] = {}
        if self.request.top_logprobs:
            values, indices = logp[0].topk(self.request.top_logprobs)
            top = dict(zip(indices.tolist(), values.tolist()))
            self.tops.append(top)
        self.logits = None
        if token == EOS_ID:
            self.finish_reason = "stop"
        elif params.stop:
            so_far = tokenizer.decode(self.token_ids)
            self.stop_at = min((so_far.index(s) for s in params.stop if s and s in so_far),
                               default=None)
            if self.stop_at is not None:
                self.finish_reason = "stop"
        if self.finish_reason is None and len(self.token_ids) == params.max_new_tokens:
            self.finish_reason = "length"
        return TokenEvent(token, self.logprobs[-1], top)

    @property
    def last_token(self) -> int:
        return self.token_ids[-1]

    def result(self, tokenizer: Tokenizer) -> Generation:
        text = tokenizer.decode([t for t in self.token_ids if t != EOS_ID])
        if self.stop_at is not None:
            text = text[:self.stop_at]
        return Generation(self.token_ids, self.logprobs, text, self.finish_reason or "length",
                          len(self.request.prompt_ids), self.tops)
