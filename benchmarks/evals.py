"""Needle-in-a-haystack samples per second in process: batched against one at a time.

What it measures: the `small` preset (random weights, eval, fp32, every core) answers text NIAH
prompts cut from the Python docs at each context length: a greedy answer of `--answer-tokens`
tokens, then the log-likelihood of the true number and `--distractors` others (the rank the eval
reports). Two ways, timed round-robin on the same prompts:

  * batched (workers/evals/local_adapter.py, what `longmix eval` runs): generation of up to
    `--batch` prompts at once, each with its own KV cache and one shared decode pass per token
    (the serving engine's decode step); the candidates of one prompt scored from ONE prefill of
    its context, all continuations in one forward pass over copies of that KV cache.
  * sequential (model/generate.py, one call per thing): `generate` per prompt, and `score` of
    context + candidate per candidate (the whole context again for each).

Both must give the same answers and ranks (checked, `same_results`). `batched_vs_sequential` is
sequential seconds / batched seconds per sample (higher: batching helps more), per length and
overall; `samples_per_s` for each.

    python benchmarks/evals.py           # 1024 and 2048 tokens, 16 samples each
    python benchmarks/evals.py --quick   # 512 tokens, 8 samples
"""

from __future__ import annotations

import statistics

import numpy as np
import torch

from _common import emit_json, machine_info, parse_args, print_table, time_interleaved_samples, \
    use_all_cores
from model.config import get_preset
from model.generate import SamplingParams, generate, score
from model.tokenizer import Tokenizer
from model.transformer import Transformer
from workers.data.needles import draw_needle, needle_sentence
from workers.data.sources import python_docs_corpus
from workers.evals.haystack import (chars_per_token, distractor_numbers, haystack,
                                    insert_at_depths, question_prompt, rank_of_first)
from workers.evals.local_adapter import LocalAdapter


def needle_prompts(adapter: LocalAdapter, texts: list[str], length: int, count: int,
                   distractors: int, seed: int) -> list[tuple[str, list[str]]]:
    """(prompt, candidates with the true number first), as niah_text builds them."""
    rng = np.random.default_rng(seed)
    cpt = chars_per_token(adapter, texts)
    out = []
    for i in range(count):
        city, number = draw_needle(rng)
        question = question_prompt(city)
        room = length - adapter.count_tokens(needle_sentence(city, number) + question) - 4
        text = insert_at_depths(haystack(adapter, texts, room, cpt, rng),
                                [needle_sentence(city, number)], [i / max(count - 1, 1)])
        candidates = [number, *distractor_numbers(rng, distractors, {number})]
        out.append((text + question, [f" {c}" for c in candidates]))
    return out


def batched(adapter: LocalAdapter, prompts, answer_tokens: int):
    answers = adapter.complete([[p] for p, _ in prompts], answer_tokens)
    ranks = [rank_of_first(adapter.loglikelihoods([p], c)) for p, c in prompts]
    return [a.text for a in answers], ranks


def sequential(adapter: LocalAdapter, prompts, answer_tokens: int):
    model, tok = adapter.model, adapter.tokenizer
    answers, ranks = [], []
    for prompt, candidates in prompts:
        ids = tok.encode(prompt, bos=True)
        answers.append(generate(model, tok, ids, SamplingParams(max_new_tokens=answer_tokens)).text)
        scores = [score(model, ids + tok.encode(c))[len(ids) - 1:].sum().item() for c in candidates]
        ranks.append(rank_of_first(scores))
    return answers, ranks


def main() -> None:
    def add(parser):
        parser.add_argument("--batch", type=int, default=8)
        parser.add_argument("--answer-tokens", type=int, default=16)
        parser.add_argument("--distractors", type=int, default=9)
        parser.add_argument("--repeats", type=int, default=3)

    args = parse_args(__doc__.splitlines()[0], add)
    threads = use_all_cores()
    lengths, count = ((512,), 8) if args.quick else ((1024, 2048), 16)
    torch.manual_seed(0)
    texts = python_docs_corpus()
    cfg = get_preset("small", max_seq_len=max(lengths) + 64)
    adapter = LocalAdapter(Transformer(cfg).eval(), Tokenizer.train(texts, cfg.vocab_size),
                           "small-random", batch_size=args.batch)
    rows, figures = [], {}
    for length in lengths:
        prompts = needle_prompts(adapter, texts, length, count, args.distractors, seed=length)
        same = batched(adapter, prompts, args.answer_tokens) == \
            sequential(adapter, prompts, args.answer_tokens)
        samples = time_interleaved_samples({
            "batched": lambda: batched(adapter, prompts, args.answer_tokens),
            "sequential": lambda: sequential(adapter, prompts, args.answer_tokens)},
            warmup=0, repeats=args.repeats)
        b, s = (statistics.median(samples[k]) for k in ("batched", "sequential"))
        figures[str(length)] = {"batched_samples_per_s": count / b,
                                "sequential_samples_per_s": count / s,
                                "batched_vs_sequential": s / b, "same_results": same}
        rows.append((length, count, f"{count / b:.2f}", f"{count / s:.2f}", f"{s / b:.2f}x", same))
    print_table(f"NIAH in process, small preset, batch {args.batch}, {args.answer_tokens} answer "
                f"tokens, {args.distractors + 1} candidates, {threads} threads",
                ["context", "samples", "batched/s", "sequential/s", "batched_vs_sequential",
                 "same results"], rows,
                caption=f"median of {args.repeats} round-robin repeats")
    overall = statistics.geometric_mean([f["batched_vs_sequential"] for f in figures.values()])
    emit_json({"benchmark": "evals", "quick": args.quick, "batch": args.batch,
               "answer_tokens": args.answer_tokens, "candidates": args.distractors + 1,
               "threads": threads, "by_length": figures, "batched_vs_sequential": overall,
               "machine": machine_info()})


if __name__ == "__main__":
    main()
