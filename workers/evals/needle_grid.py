"""Scoring a grid of needle samples (context length x depth), whatever the haystack's medium:
greedy answers scored by whether they contain the number, the log-likelihood rank of the true
number among distractors (small models that cannot answer in free text still rank it), heatmaps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.evals.adapters import Audio, CapabilityError, ModelAdapter, Part, Video
from workers.evals.figures import heatmaps
from workers.evals.haystack import distractor_numbers, found, rank_of_first
from workers.evals.results import EvalDataset, EvalResult


@dataclass
class NeedleSample:
    length: float  # the grid's length axis: tokens, seconds or frames
    depth: float  # 0..1
    city: str
    number: str
    prompt: list[Part]


def describe(prompt: list[Part]) -> str:
    """The prompt as text for the dataset table, media shown by their size."""
    out = []
    for p in prompt:
        if isinstance(p, Audio):
            out.append(f"<audio {len(p.wave) / p.sample_rate:.1f}s>")
        elif isinstance(p, Video):
            out.append(f"<video {len(p.frames)} frames>")
        else:
            out.append(p)
    return "".join(out)


def score_grid(result: EvalResult, adapter: ModelAdapter, samples: list[NeedleSample],
               dataset_source: str, answer_tokens: int, distractors: int,
               rng: np.random.Generator, length_label: str) -> None:
    rows = [{"length": s.length, "depth": round(s.depth, 4), "city": s.city, "number": s.number,
             "prompt": describe(s.prompt)} for s in samples]
    dataset = EvalDataset.of(f"{result.eval}/{dataset_source}", dataset_source, rows)
    result.datasets.append(dataset)
    answers = adapter.complete([s.prompt for s in samples], answer_tokens)
    ranks: list[int | None] = []
    for s in samples:
        candidates = [s.number, *distractor_numbers(rng, distractors, {s.number})]
        try:
            scores = adapter.loglikelihoods(s.prompt, [f" {c}" for c in candidates])
            ranks.append(rank_of_first(scores))
        except CapabilityError as e:
            ranks.append(None)
            if not result.notes:
                result.notes.append(f"log-likelihood rank not measured: {e}")
    table = []
    for row, s, answer, rank in zip(rows, samples, answers, ranks):
        table.append({**row, "answer": answer.text, "found": found(s.number, answer.text),
                      "rank": rank, "candidates": distractors + 1})
    result.tables[result.eval] = table
    hits = [r["found"] for r in table]
    result.metric("accuracy", np.mean(hits), len(hits), dataset)
    ranked = [r["rank"] for r in table if r["rank"] is not None]
    if ranked:
        result.metric("rank_top1", np.mean([r == 1 for r in ranked]), len(ranked), dataset)
        result.metric("mean_rank", np.mean(ranked), len(ranked), dataset, higher_is_better=False)
    lengths = sorted({s.length for s in samples})
    for length in lengths:  # per context length: where retrieval holds and where it breaks
        at = [r for r in table if r["length"] == length]
        label = length_label_of(length)
        result.metric(f"accuracy.{label}", np.mean([r["found"] for r in at]), len(at), dataset)
        ranked_at = [r["rank"] for r in at if r["rank"] is not None]
        if ranked_at:
            result.metric(f"rank_top1.{label}", np.mean([r == 1 for r in ranked_at]),
                          len(ranked_at), dataset)
    depths = sorted({round(s.depth, 4) for s in samples})
    panels = [("answer contains the number", _grid(table, "found", lengths, depths), "RdYlGn",
               0.0, 1.0)]
    if ranked:
        panels.append((f"rank of the true number (of {distractors + 1})",
                       _grid(table, "rank", lengths, depths), "RdYlGn_r", 1.0,
                       float(distractors + 1)))
    result.figures[f"{result.eval}_heatmap.png"] = heatmaps(panels, lengths, depths, length_label)


def length_label_of(length: float) -> str:
    """A grid length as a metric name part: len512, len2048, len12.5 (seconds)."""
    return f"len{int(length)}" if float(length).is_integer() else f"len{float(length)}"


def _grid(table: list[dict], key: str, lengths: list, depths: list) -> np.ndarray:
    grid = np.full((len(depths), len(lengths)), np.nan)
    for i, d in enumerate(depths):
        for j, n in enumerate(lengths):
            values = [float(r[key]) for r in table
                      if r["depth"] == d and r["length"] == n and r[key] is not None]
            if values:
                grid[i, j] = np.mean(values)
    return grid
