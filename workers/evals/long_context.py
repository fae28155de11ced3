"""Text needle-in-a-haystack over a grid of context lengths x depths, and multi-needle recall,
on held-out haystacks, in the Gemini 1.5 report's protocol (needle sentence at a sentence break,
greedy decoding, scored by whether the answer contains the number)."""

from __future__ import annotations

import numpy as np

from workers.data.needles import draw_needle, draw_needles, multi_needle_question, needle_sentence
from workers.evals.adapters import CapabilityError, ModelAdapter
from workers.evals.config import SuiteConfig
from workers.evals.haystack import (chars_per_token, distractor_numbers, found, haystack,
                                    insert_at_depths, question_prompt, rank_of_first)
from workers.evals.heldout import HeldOut
from workers.evals.needle_grid import NeedleSample, score_grid
from workers.evals.results import EvalDataset, EvalResult

BOS_AND_SLACK = 4  # tokens the haystack leaves for <|bos|> and tokenization at the joins


def overhead(adapter: ModelAdapter, sentences: list[str], question: str) -> int:
    """Tokens a haystack must leave for the needles, the question and <|bos|>."""
    return adapter.count_tokens(" ".join(sentences) + " " + question) + BOS_AND_SLACK


def niah_text(adapter: ModelAdapter, data: HeldOut, cfg: SuiteConfig) -> EvalResult:
    result = EvalResult(eval="niah_text")
    rng = np.random.default_rng([cfg.seed, 1])
    cpt = chars_per_token(adapter, data.texts)
    samples = []
    for length in cfg.niah_lengths:
        for depth in np.linspace(0.0, 1.0, cfg.niah_depths):
            for _ in range(cfg.niah_samples):
                city, number = draw_needle(rng)
                needle, question = needle_sentence(city, number), question_prompt(city)
                room = length - overhead(adapter, [needle], question)
                text = insert_at_depths(haystack(adapter, data.texts, room, cpt, rng), [needle],
                                        [float(depth)])
                samples.append(NeedleSample(length, float(depth), city, number,
                                            [text + question]))
    score_grid(result, adapter, samples, data.name, cfg.answer_tokens, cfg.niah_distractors, rng,
               "context length (tokens)")
    return result


def multi_needle(adapter: ModelAdapter, data: HeldOut, cfg: SuiteConfig) -> EvalResult:
    """N needles at evenly spaced depths, one question for all: recall = found / hidden. Each
    needle is also ranked among the other needles' numbers and random ones, asked on its own."""
    result = EvalResult(eval="multi_needle")
    rng = np.random.default_rng([cfg.seed, 2])
    cpt = chars_per_token(adapter, data.texts)
    n = cfg.multi_needles
    depths = [(i + 1) / (n + 1) for i in range(n)]
    rows, prompts, texts = [], [], []
    for _ in range(cfg.multi_samples):
        needles = draw_needles(rng, n)
        sentences = [needle_sentence(c, x) for c, x in needles]
        question = multi_needle_question([needles[int(i)][0] for i in rng.permutation(n)])
        room = cfg.multi_length - overhead(adapter, sentences, question)
        text = insert_at_depths(haystack(adapter, data.texts, room, cpt, rng), sentences, depths)
        prompt = f"{text}\n\nQuestion: {question} Answer:"
        rows.append({"needles": needles, "prompt": prompt})
        prompts.append([prompt])
        texts.append(text)
    dataset = EvalDataset.of(f"multi_needle/{data.name}", data.name,
                             [{"needles": r["needles"], "prompt": r["prompt"]} for r in rows])
    result.datasets.append(dataset)
    answers = adapter.complete(prompts, cfg.answer_tokens * n)
    table, hits, ranks = [], [], []
    for row, text, answer in zip(rows, texts, answers):
        numbers = [x for _, x in row["needles"]]
        for (city, number), depth in zip(row["needles"], depths):
            distractors = distractor_numbers(rng, max(cfg.niah_distractors - (n - 1), 0),
                                             set(numbers))
            candidates = [number, *(x for x in numbers if x != number), *distractors]
            rank = None
            try:
                rank = rank_of_first(adapter.loglikelihoods(
                    [text + question_prompt(city)], [f" {c}" for c in candidates]))
            except CapabilityError as e:
                if not result.notes:
                    result.notes.append(f"log-likelihood rank not measured: {e}")
            table.append({"city": city, "number": number, "depth": depth,
                          "answer": answer.text, "found": found(number, answer.text),
                          "rank": rank, "candidates": len(candidates)})
            hits.append(found(number, answer.text))
            ranks += [rank] if rank is not None else []
    result.tables["multi_needle"] = table
    result.metric("recall", np.mean(hits), len(hits), dataset)
    if ranks:
        result.metric("rank_top1", np.mean([r == 1 for r in ranks]), len(ranks), dataset)
    return result
