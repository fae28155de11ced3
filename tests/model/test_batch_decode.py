"""Batched prefill and decode (model/batch_decode.py) give, row by row, what each sequence's own
cache and prefill give."""

import pytest
import torch

from model.attention import KVCache
from model.batch_decode import BatchKV, decode_rows, decode_step, prefill_batch
from model.generate import prefill
from model.transformer import Transformer

PROMPTS = ["def main():", "import os\n", "class A", "x = [1, 2, 3]\nfor i in x:\n    print("]


@pytest.fixture
def model(tiny_cfg):
    return Transformer(tiny_cfg).eval()


def test_a_batched_prefill_fills_each_cache_as_a_prefill_of_its_own(model, tokenizer, tiny_cfg):
    prompts = [tokenizer.encode(p, bos=True) for p in PROMPTS[:4]]  # different lengths: padding
    caches = [KVCache(tiny_cfg, 1, len(p) + 3) for p in prompts]
    logits = prefill_batch(model, prompts, caches)
    for row, (prompt, cache) in enumerate(zip(prompts, caches)):
        alone = KVCache(tiny_cfg, 1, len(prompt) + 3)
        expected = prefill(model, torch.tensor([prompt]), alone, chunk=1024)
        assert cache.length == alone.length == len(prompt)
        torch.testing.assert_close(logits[row:row + 1], expected, atol=1e-5, rtol=1e-5)
        for layer in range(tiny_cfg.n_layers):
            for got, expected in ((cache.keys[layer], alone.keys[layer]),
                                  (cache.values[layer], alone.values[layer])):
                torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_the_batch_kv_rows_decode_as_the_sequences_own_caches(model, tokenizer, tiny_cfg):
    prompts = [tokenizer.encode(p, bos=True) for p in PROMPTS[:3]]
    caches, rows = [], BatchKV(model)
    for prompt in prompts:
        own, joining = KVCache(tiny_cfg, 1, len(prompt) + 80), KVCache(tiny_cfg, 1, len(prompt))
        prefill(model, torch.tensor([prompt]), own, chunk=1024)
        prefill(model, torch.tensor([prompt]), joining, chunk=1024)
        caches.append(own)
        rows.add(joining)
    tokens = [20, 21, 22]
    for step in range(70):  # past the first capacity (64): the rows grow
        if step == 5:  # the middle sequence leaves; the others move up
            caches, tokens = [caches[0], caches[2]], [tokens[0], tokens[2]]
            rows.keep([0, 2])
        expected = decode_step(model, tokens, caches)
        torch.testing.assert_close(decode_rows(model, tokens, rows), expected, atol=1e-5, rtol=1e-5)
        tokens = expected.argmax(-1).tolist()
    assert rows.lengths == [c.length for c in caches]
