"""Generation with a KV cache: chunked prefill, greedy or temperature/top-p sampling, stop
sequences, per-token log-probabilities; and scoring of given tokens (echo)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from model.attention import KVCache
from model.encoders import Media
from model.tokenizer import EOS_ID, NEVER_GENERATED_IDS, Tokenizer
from model.transformer import Transformer


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    prefill_chunk: int = 1024  # prompt tokens per forward pass during prefill

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {self.prefill_chunk}")


@dataclass
class Generation:
    token_ids: list[int]
    logprobs: list[float]  # log p of each token before temperature/top-p (media tokens excluded)
    text: str
    finish_reason: str  # "stop" (stop sequence or end of sequence) | "length"
    prompt_tokens: int = 0
    top_logprobs: list[dict[int, float]] = field(default_factory=list)


@torch.no_grad()
def prefill(model: Transformer, ids: torch.Tensor, cache: KVCache, chunk: int,
            media: Media | None = None) -> torch.Tensor:
    """Run the prompt (1, T) through the model in chunks of `chunk` tokens; logits (1, V) of the last.

    Media are encoded once for the whole prompt, so a placeholder run may straddle chunks.
    """
    x = model.embed(ids, media)  # (1, T, D)
    logits = None
    for start in range(0, x.shape[1], chunk):
        logits = model.forward_embeddings(x[:, start:start + chunk], cache=cache).logits[:, -1]
    return logits


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = (logits / temperature).softmax(dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        outside = sorted_p.cumsum(-1) - sorted_p >= top_p  # tokens after the nucleus is full
        sorted_p = sorted_p.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: Transformer, tokenizer: Tokenizer, prompt_ids: list[int],
             params: SamplingParams | None = None, media: Media | None = None,
             top_logprobs: int = 0) -> Generation:
    params = params or SamplingParams()
    cfg = model.cfg
    total = len(prompt_ids) + params.max_new_tokens
    if total > cfg.max_seq_len:
        raise ValueError(f"prompt of {len(prompt_ids)} tokens + max_new_tokens="
                         f"{params.max_new_tokens} exceeds the context of {cfg.max_seq_len}")
    device = next(model.parameters()).device
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    cache = KVCache(cfg, 1, total, dtype=next(model.parameters()).dtype, device=device)
    ids = torch.tensor([prompt_ids], device=device)
    logits = prefill(model, ids, cache, params.prefill_chunk, media)  # (1, V)

    out_ids: list[int] = []
    logprobs: list[float] = []
    tops: list[dict[int, float]] = []
    finish, stop_at = "length", None
    for _ in range(params.max_new_tokens):
        logits[:, NEVER_GENERATED_IDS] = float("-inf")
        logp = logits.log_softmax(-1)  # (1, V)
        token = sample_next(logits, params.temperature, params.top_p, generator)  # (1,)
        tok = int(token)
        out_ids.append(tok)
        logprobs.append(float(logp[0, tok]))
        if top_logprobs:
            values, indices = logp[0].topk(top_logprobs)
            tops.append(dict(zip(indices.tolist(), values.tolist())))
        if tok == EOS_ID:
            finish = "stop"
            break
        if params.stop:
            so_far = tokenizer.decode(out_ids)
            stop_at = min((so_far.index(s) for s in params.stop if s and s in so_far), default=None)
            if stop_at is not None:
                finish = "stop"
                break
        if len(out_ids) < params.max_new_tokens:
            logits = model.forward(token[None], cache=cache).logits[:, -1]
    text = tokenizer.decode([t for t in out_ids if t != EOS_ID])
    if stop_at is not None:
        text = text[:stop_at]
    return Generation(out_ids, logprobs, text, finish, len(prompt_ids), tops)


@torch.no_grad()
def score(model: Transformer, ids: list[int], media: Media | None = None) -> torch.Tensor:
    """Log-probability of each token given the ones before it: (T-1,) for ids[1:]."""
    x = torch.tensor([ids], device=next(model.parameters()).device)
    logp = model(x, media).logits[0, :-1].log_softmax(-1)  # (T-1, V)
    return logp.gather(-1, x[0, 1:, None]).squeeze(-1)
