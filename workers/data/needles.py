"""The needle of every retrieval task, in one place: the cities, the number format, the sentence
that hides it and the question that asks for it. Text, spoken and frame needles all use these, so
a model evaluated on one kind sees the same wording as in the others."""

from __future__ import annotations

import numpy as np

NEEDLE_CITIES = (
    "Paris", "Tokyo", "Lagos", "Lima", "Oslo", "Cairo", "Sydney", "Toronto", "Mumbai", "Berlin",
    "Nairobi", "Santiago", "Seoul", "Madrid", "Dublin", "Hanoi", "Quito", "Vienna", "Denver",
    "Perth",
)


def needle_sentence(city: str, number: str) -> str:
    return f"The special magic {city} number is: {number}."


def needle_question(city: str) -> str:
    return f"What is the special magic {city} number?"


def draw_needle(rng: np.random.Generator) -> tuple[str, str]:
    """A city and its seven-digit number."""
    return str(rng.choice(NEEDLE_CITIES)), str(int(rng.integers(1_000_000, 10_000_000)))
