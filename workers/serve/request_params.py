"""From an API request to the engine's sequence requests, refusing what cannot run: an unknown
model name, a prompt or max_tokens beyond the model's context, token ids outside the vocabulary."""

from __future__ import annotations

from model.encoders import Media
from model.generate import SamplingParams
from model.sequence import SequenceRequest
from model.tokenizer import Tokenizer
from workers.serve.errors import APIError
from workers.serve.loading import ServedModel
from workers.serve.schemas import Sampling

SEED_MODULUS = 2 ** 63


def check_model(requested: str, served: ServedModel) -> None:
    if requested != served.name:
        raise APIError(404, f"the model `{requested}` does not exist; this endpoint serves "
                            f"`{served.name}`", param="model", code="model_not_found")


def prompt_token_ids(prompt: str | list, tokenizer: Tokenizer) -> list[list[int]]:
    """Text prompts start with <|bos|> (as `longmix generate` does); token ids are used as given."""
    if isinstance(prompt, str):
        return [tokenizer.encode(prompt, bos=True)]
    if all(isinstance(p, str) for p in prompt):
        return [tokenizer.encode(p, bos=True) for p in prompt]
    prompts = prompt if isinstance(prompt[0], list) else [prompt]
    for i, ids in enumerate(prompts):
        bad = [t for t in ids if t >= tokenizer.vocab_size]
        if bad:
            raise APIError(400, f"prompt {i} has token ids outside the vocabulary of "
                                f"{tokenizer.vocab_size}: {bad[:5]}", param="prompt",
                           code="invalid_value")
    return prompts


def sequence_requests(prompt_ids: list[int], body: Sampling, max_tokens: int, top_logprobs: int,
                      served: ServedModel, prompt_param: str, stop: tuple[str, ...],
                      media: Media | None = None) -> list[SequenceRequest]:
    """One sequence per choice (n); choice i samples with seed + i."""
    context = served.context
    if max_tokens > context - 1:
        raise APIError(400, f"max_tokens={max_tokens} is out of range: at most {context - 1} for "
                            f"this model's context of {context} tokens", param="max_tokens",
                       code="invalid_value")
    if len(prompt_ids) + max_tokens > context:
        raise APIError(400, f"this model's maximum context length is {context} tokens; the prompt "
                            f"has {len(prompt_ids)} and max_tokens is {max_tokens}",
                       param=prompt_param, code="context_length_exceeded")
    return [SequenceRequest(prompt_ids, SamplingParams(
        max_new_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, stop=stop,
        seed=None if body.seed is None else (body.seed + i) % SEED_MODULUS),
        media, top_logprobs) for i in range(body.n)]
