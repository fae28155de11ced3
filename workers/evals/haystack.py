"""Haystacks of a given length in the evaluated model's own tokens, needles placed at a depth (at
the sentence break nearest to it), and the rank of the true answer among distractors by
log-likelihood."""

from __future__ import annotations

import numpy as np

from workers.data.needles import needle_question
from workers.data.retrieval import haystack_with_room, insert_sentences, sentence_breaks
from workers.evals.adapters import ModelAdapter

SAMPLE_CHUNKS, CHUNK_CHARS = 8, 300  # short enough for any model's context
FIT_TRIES = 6
MIN_HAYSTACK_TOKENS = 32  # a few sentences: less hides nothing


def chars_per_token(adapter: ModelAdapter, texts: list[str]) -> float:
    """The model's characters per token on held-out text (each chunk's count includes its
    beginning-of-sequence token: about 1% low)."""
    joined = "\n\n".join(texts)
    starts = np.linspace(0, max(len(joined) - CHUNK_CHARS, 0), SAMPLE_CHUNKS).astype(int)
    chunks = [c for c in (joined[i:i + CHUNK_CHARS] for i in starts) if c.strip()]
    return sum(map(len, chunks)) / max(sum(adapter.count_tokens(c) for c in chunks), 1)


def haystack(adapter: ModelAdapter, texts: list[str], tokens: int, cpt: float,
             rng: np.random.Generator) -> str:
    """At most `tokens` tokens of held-out text (as the model counts them), from a sentence start
    to a sentence end. Cut by the measured characters per token, and cut again shorter while the
    model counts more: text varies in density (code takes more tokens than prose)."""
    if tokens < MIN_HAYSTACK_TOKENS:
        raise ValueError(f"{tokens} tokens of haystack are left at this length after the needles "
                         f"and the question, fewer than the {MIN_HAYSTACK_TOKENS} a haystack "
                         "needs: evaluate at a longer length")
    chars = max(int(tokens * cpt), 1)
    for _ in range(FIT_TRIES):
        text = haystack_with_room(texts, chars, rng)[0]
        counted = adapter.count_tokens(text)
        if counted <= tokens:
            return text
        chars = int(chars * tokens / counted * 0.95)
    raise ValueError(f"no stretch of held-out text fits {tokens} tokens at a sentence end in "
                     f"{FIT_TRIES} tries")


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
