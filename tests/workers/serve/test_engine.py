import asyncio

import pytest
import torch

from model.generate import SamplingParams, generate, score
from model.sequence import SequenceRequest
from model.transformer import Transformer
from workers.serve.engine import BatchLimits, Engine

PROMPTS = ["def main():", "import os\n", "class A", "x = [1, 2, 3]\nfor i in x:\n    print(", "#"]


@pytest.fixture
def model(tiny_cfg):
    return Transformer(tiny_cfg).eval()


def run_concurrently(engine: Engine, requests: list[SequenceRequest], stagger_s: float = 0.0):
    """Submit every request at once (or a little apart, so some join a running batch)."""
    async def one(i, request):
        await asyncio.sleep(i * stagger_s)
        return await engine.generate(request)

    async def main():
        return await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))

    return asyncio.run(main())


@pytest.mark.parametrize("stagger_s", [0.0, 0.003])
def test_batched_greedy_decoding_gives_the_tokens_of_single_sequence_generate(
        model, tokenizer, stagger_s):
    lengths = [12, 5, 20, 1, 9]  # sequences leave the batch at different steps
    requests = [SequenceRequest(tokenizer.encode(p, bos=True), SamplingParams(max_new_tokens=n))
                for p, n in zip(PROMPTS, lengths)]
    steps = []
    engine = Engine(model, tokenizer, BatchLimits(max_batch_size=3), on_step=steps.append)
    results = run_concurrently(engine, requests, stagger_s)
    for request, got in zip(requests, results):
        expected = generate(model, tokenizer, request.prompt_ids, request.params)
        assert got.token_ids == expected.token_ids
        assert got.logprobs == pytest.approx(expected.logprobs, abs=1e-4)
        assert (got.text, got.finish_reason) == (expected.text, expected.finish_reason)
    sizes = [s.batch_size for s in steps]
    assert max(sizes) == 3 and sum(sizes) == sum(lengths)  # shared passes, never over the limit


def test_seeded_sampling_and_stop_strings_match_generate(model, tokenizer):
    free = generate(model, tokenizer, tokenizer.encode("x", bos=True), SamplingParams(max_new_tokens=10))
    stop = free.text[2:4]
    params = [SamplingParams(max_new_tokens=16, temperature=0.9, top_p=0.9, seed=s) for s in (1, 2)]
    params.append(SamplingParams(max_new_tokens=10, stop=(stop,)))
    requests = [SequenceRequest(tokenizer.encode(p, bos=True), sp, top_logprobs=3)
                for p, sp in zip(["import", "import", "x"], params)]
    results = run_concurrently(Engine(model, tokenizer, BatchLimits()), requests)
    for request, got in zip(requests, results):
        expected = generate(model, tokenizer, request.prompt_ids, request.params, top_logprobs=3)
        assert got.token_ids == expected.token_ids and got.text == expected.text
        assert len(got.top_logprobs) == len(expected.top_logprobs)
        for mine, theirs in zip(got.top_logprobs, expected.top_logprobs):
            assert list(mine) == list(theirs)  # the same tokens, in rank order
            assert list(mine.values()) == pytest.approx(list(theirs.values()), abs=1e-4)
    assert results[2].finish_reason == "stop" and stop not in results[2].text


def test_the_token_budget_limits_what_joins_the_batch(model, tokenizer):
    steps = []
    engine = Engine(model, tokenizer, BatchLimits(max_batch_size=8, max_batch_tokens=30),
                    on_step=steps.append)
    prompt = tokenizer.encode("def", bos=True)
    requests = [SequenceRequest(prompt, SamplingParams(max_new_tokens=10)) for _ in range(4)]
    run_concurrently(engine, requests)
    assert max(s.batch_size for s in steps) == 30 // (len(prompt) + 10)


def test_prompt_scores_equal_model_generate_score(model, tokenizer):
    ids = tokenizer.encode("def main():\n    return 1", bos=True)
    engine = Engine(model, tokenizer, BatchLimits())
    scores = asyncio.run(engine.score_prompt(ids, None, top_n=2))
    assert scores.logprobs[0] is None
    assert torch.tensor(scores.logprobs[1:]).tolist() == score(model, ids).tolist()
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)  # (T, V)
    for position, top in enumerate(scores.top_logprobs[1:]):
        values, tokens = logp[position].topk(2)
        assert list(top) == tokens.tolist()
        assert list(top.values()) == pytest.approx(values.tolist(), abs=1e-4)


def test_a_stream_closed_mid_way_leaves_the_batch_at_the_next_token(model, tokenizer):
    """A client that goes away stops costing decode steps: its sequence is dropped at the next
    token boundary, not decoded to its max_tokens."""
    steps = []
    engine = Engine(model, tokenizer, BatchLimits(), on_step=steps.append)
    abandoned = SequenceRequest(tokenizer.encode("while True:", bos=True),
                                SamplingParams(max_new_tokens=400))
    after = SequenceRequest(tokenizer.encode("x", bos=True), SamplingParams(max_new_tokens=3))

    async def main():
        stream = engine.stream(abandoned)
        async for _ in stream:
            break  # one token, then the client leaves
        await stream.aclose()
        produced_at_close = sum(s.batch_size for s in steps)
        result = await engine.generate(after)
        return produced_at_close, result

    produced_at_close, result = asyncio.run(main())
    assert len(result.token_ids) == 3  # the engine still serves
    # the abandoned sequence decoded at most one more token after its client left
    assert sum(s.batch_size for s in steps) <= produced_at_close + 1 + 3
    assert produced_at_close < 400
