"""Haystacks of a given length in the evaluated model's own tokens, needles placed at a depth (at
the sentence break nearest to it), and the rank of the true answer among distractors by
log-likelihood."""

from __future__ import annotations

import numpy as np

from workers.data.needles import needle_question
from workers.data.retrieval import chars_per_token as text_chars_per_token
from workers.data.retrieval import (fit_to_tokens, haystack_with_room, insert_sentences,
                                    sentence_breaks)
from workers.evals.adapters import ModelAdapter
from workers.evals.config import MIN_HAYSTACK_TOKENS


def chars_per_token(adapter: ModelAdapter, texts: list[str]) -> float:
    """The model's characters per token on held-out text (each chunk's count includes its
    beginning-of-sequence token: about 1% low)."""
    return text_chars_per_token(texts, adapter.count_tokens)


def haystack(adapter: ModelAdapter, texts: list[str], tokens: int, cpt: float,
             rng: np.random.Generator) -> str:
    """At most `tokens` tokens of held-out text (as the model counts them), from a sentence start
    to a sentence end."""
    if tokens < MIN_HAYSTACK_TOKENS:
        raise ValueError(f"{tokens} tokens of haystack are left at this length after the needles "
                         f"and the question, fewer than the {MIN_HAYSTACK_TOKENS} a haystack "
                         "needs: evaluate at a longer length")
    return fit_to_tokens(lambda chars: haystack_with_room(texts, chars, rng), tokens,
                         adapter.count_tokens, cpt)[0]


def insert_at_depths(text: str, sentences: list[str], depths: list[float]) -> str:
    """Each sentence at the sentence break nearest its depth (0: the start, 1: the end)."""
    breaks = np.array(sentence_breaks(text) + [len(text)])
    positions = [int(breaks[np.abs(breaks - d * len(text)).argmin()]) for d in depths]
    order = np.argsort(positions, kind="stable")
    return insert_sentences(text, [positions[i] for i in order], [sentences[i] for i in order])


def question_prompt(city: str, before: str = "\n\n") -> str:
    """The question after the haystack, as the retrieval training examples ask it (after text:
    a blank line; after media: a space)."""
    return f"{before}Question: {needle_question(city)} Answer:"


def distractor_numbers(rng: np.random.Generator, count: int, exclude: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < count:
        n = str(int(rng.integers(1_000_000, 10_000_000)))
        if n not in exclude and n not in out:
            out.append(n)
    return out


def rank_of_first(scores: list[float]) -> int:
    """1 + how many candidates score strictly higher than the first (the true one)."""
    return 1 + sum(s > scores[0] for s in scores[1:])


def found(number: str, answer: str) -> bool:
    return number in answer
