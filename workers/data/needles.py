"""The evaluation's needle, in one place: the cities, the number format, the sentence that hides
it and the questions that ask for it (the Gemini 1.5 report's "The special magic {city} number
is: {number}."). Text, spoken and frame needle evals all use these. Training data never does: the
retrieval curriculum (workers/data/retrieval.py) is phrased from other templates, keys and value
formats, and checked against these."""

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


def join_names(names: list[str]) -> str:
    """"A, B and C"."""
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]


def multi_needle_question(cities: list[str]) -> str:
    return f"What are the special magic numbers for {join_names(cities)}?"


def draw_needle(rng: np.random.Generator) -> tuple[str, str]:
    """A city and its seven-digit number."""
    return str(rng.choice(NEEDLE_CITIES)), str(int(rng.integers(1_000_000, 10_000_000)))


def draw_needles(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    """n (city, number) pairs with distinct cities and distinct numbers."""
    drawn: list[tuple[str, str]] = []
    while len(drawn) < n:
        city, number = draw_needle(rng)
        if not any(number == x or city == c for c, x in drawn):
            drawn.append((city, number))
    return drawn
