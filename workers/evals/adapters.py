"""What every eval asks of a model, and the two ways to ask it: a checkpoint loaded in this
process (local_adapter.py) or any OpenAI-compatible endpoint (endpoint_adapter.py).

Prompts are portable: text, and media as the raw signal (a waveform, RGB frames) that each
adapter turns into what its model takes (log-mel features here, WAV and PNG over HTTP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class CapabilityError(ValueError):
    """The model (or endpoint) cannot do what an eval needs, e.g. no prompt log-probabilities."""


@dataclass
class Audio:
    wave: np.ndarray  # (samples,) float32 in [-1, 1], mono
    sample_rate: int


@dataclass
class Video:
    frames: list[np.ndarray]  # each (S, S, 3) uint8, one size
    timestamps: list[float]  # seconds, increasing


Part = str | Audio | Video


@dataclass
class Message:
    role: str  # system | user | assistant
    content: list[Part]


@dataclass
class TokenSequence:
    """A held-out sequence already tokenized by the dataset's tokenizer (with its media), for the
    in-process model that shares that tokenizer; `text` is its text for any other model."""

    ids: list[int]
    media: object  # model.encoders.Media
    text: str
    modality: str  # text | image | audio | video
    tokenizer_digest: str | None = None  # the tokenizer that made `ids`


@dataclass
class Generated:
    text: str
    prompt_tokens: int = 0  # as the model counted them


class ModelAdapter(Protocol):
    name: str  # what the report calls the model
    digest: str | None  # sha256 naming its exact weights, where known (checkpoints)

    def complete(self, prompts: list[list[Part]], max_tokens: int) -> list[Generated]:
        """Greedy continuation of each plain prompt (no chat template)."""

    def chat(self, conversations: list[list[Message]], max_tokens: int) -> list[Generated]:
        """Greedy reply of the assistant to each conversation."""

    def loglikelihoods(self, context: list[Part], continuations: list[str]) -> list[float]:
        """log p(continuation | context) for each continuation (sum over its tokens)."""

    def token_logprobs(self, sequence: TokenSequence) -> list[float]:
        """log p of each token after the first given those before it; NaN where a token is not
        predicted (media placeholders)."""

    def count_tokens(self, text: str) -> int:
        """Tokens the model reads for `text` as a whole prompt (its beginning-of-sequence token
        included, where it has one)."""


def text_only(parts: list[Part], what: str) -> str:
    """The prompt as one string, or CapabilityError naming the media an endpoint cannot take."""
    media = [type(p).__name__.lower() for p in parts if not isinstance(p, str)]
    if media:
        raise CapabilityError(f"{what} takes text only; this prompt holds {', '.join(media)}")
    return "".join(parts)
