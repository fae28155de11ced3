"""The in-process adapter's batched generation and shared-prefix likelihoods give what the plain
single-sequence functions of model/generate.py give."""

import math

import numpy as np
import pytest
import torch

from model.checkpoint import load_checkpoint
from model.generate import SamplingParams, generate, score
from workers.evals.adapters import Audio, CapabilityError, TokenSequence, Video
from workers.evals.local_adapter import LocalAdapter


@pytest.fixture(scope="module")
def adapter(trained):
    return LocalAdapter.from_checkpoint(trained.checkpoint, batch_size=3)


def test_batched_generation_equals_one_at_a_time(adapter):
    prompts = ["The special magic", "Question: What is", "def main():", "Contact record:",
               "The Python"]
    batched = adapter.complete([[p] for p in prompts], max_tokens=12)
    for prompt, got in zip(prompts, batched):
        ids = adapter.tokenizer.encode(prompt, bos=True)
        alone = generate(adapter.model, adapter.tokenizer, ids, SamplingParams(max_new_tokens=12))
        assert got.text == alone.text
        assert got.prompt_tokens == len(ids)


def test_loglikelihoods_equal_scoring_the_whole_sequence(adapter):
    context = "Question: What is the special magic Paris number? Answer:"
    continuations = [" 1234567", " 42", " 9876543 and more"]
    got = adapter.loglikelihoods([context], continuations)
    for cont, value in zip(continuations, got):
        ctx_ids = adapter.tokenizer.encode(context, bos=True)
        ids = ctx_ids + adapter.tokenizer.encode(cont)
        expected = score(adapter.model, ids)[len(ctx_ids) - 1:].sum().item()
        assert value == pytest.approx(expected, abs=1e-4)


def test_media_prompts_are_encoded_and_scored(adapter):
    wave = np.sin(np.linspace(0, 2000, 16000)).astype(np.float32) * 0.3
    frames = [np.full((16, 16, 3), 40 * i, np.uint8) for i in range(3)]
    prompt = ["Listen: ", Audio(wave, 16000), " and watch: ", Video(frames, [0.0, 1.0, 2.0]),
              " Answer:"]
    (reply,) = adapter.complete([prompt], max_tokens=4)
    assert isinstance(reply.text, str) and reply.prompt_tokens > 40
    scores = adapter.loglikelihoods(prompt, [" 1", " 2"])
    assert all(math.isfinite(s) and s < 0 for s in scores)


def test_token_logprobs_mark_media_placeholders_unpredicted(adapter, trained):
    from workers.evals.heldout import load_heldout

    data = load_heldout(str(trained.dataset))
    audio = next(s for s in data.sequences if s.modality == "audio")
    values = adapter.token_logprobs(audio)
    assert len(values) == len(audio.ids) - 1
    assert any(math.isnan(v) for v in values) and any(not math.isnan(v) for v in values)
    foreign = TokenSequence(audio.ids, audio.media, audio.text, "audio", "another-tokenizer")
    with pytest.raises(CapabilityError, match="another tokenizer"):
        adapter.token_logprobs(foreign)


def test_a_prompt_beyond_the_context_is_refused(adapter):
    with pytest.raises(ValueError, match="context"):
        adapter.complete([["word " * 2000]], max_tokens=4)


def test_the_checkpoint_is_verified_before_loading(trained, tmp_path):
    import shutil

    from model.checkpoint import CheckpointError

    copy = tmp_path / "tampered"
    shutil.copytree(trained.checkpoint, copy)
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    with pytest.raises(CheckpointError, match="config.json"):
        LocalAdapter.from_checkpoint(copy)
    model, _ = load_checkpoint(trained.checkpoint)
    assert isinstance(model, torch.nn.Module)


def test_haystacks_fit_their_token_budget_whatever_the_text_density(adapter):
    from workers.data.sources import python_docs_corpus
    from workers.evals.haystack import chars_per_token, haystack

    texts = python_docs_corpus()
    rng = np.random.default_rng(0)
    for budget in (60, 150, 300):
        # characters per token overestimated 3x: the cut must still come back within budget
        text = haystack(adapter, texts, budget, 3 * chars_per_token(adapter, texts), rng)
        assert adapter.count_tokens(text) <= budget and text.endswith(".")
