import pytest
import torch

from model.generate import SamplingParams, generate, sample_next, score
from model.tokenizer import EOS_ID, NEVER_GENERATED_IDS
from model.transformer import Transformer


@pytest.fixture
def model(tiny_cfg):
    return Transformer(tiny_cfg).eval()


def test_greedy_generation_follows_the_argmax_of_the_full_forward(model, tokenizer):
    prompt = tokenizer.encode("def main():", bos=True)
    gen = generate(model, tokenizer, prompt, SamplingParams(max_new_tokens=8, prefill_chunk=3))
    stopped = EOS_ID in gen.token_ids
    assert gen.finish_reason == ("stop" if stopped else "length")
    assert len(gen.token_ids) == 8 or stopped
    assert gen.prompt_tokens == len(prompt)
    seq = prompt + gen.token_ids
    with torch.no_grad():
        logp = model(torch.tensor([seq])).logits[0]
    logp[:, NEVER_GENERATED_IDS] = float("-inf")
    logp = logp.log_softmax(-1)
    for i, tok in enumerate(gen.token_ids):
        row = logp[len(prompt) + i - 1]
        assert tok == int(row.argmax())
        assert gen.logprobs[i] == pytest.approx(float(row[tok]), abs=1e-4)
    assert not set(gen.token_ids) & set(NEVER_GENERATED_IDS)


def test_score_gives_the_log_probability_of_each_token(model):
    seq = torch.randint(20, 512, (1, 20))
    with torch.no_grad():
        logp = model(seq).logits[0].log_softmax(-1)
    expected = torch.stack([logp[i, seq[0, i + 1]] for i in range(19)])
    torch.testing.assert_close(score(model, seq[0].tolist()), expected)


def test_sampling_is_reproducible_with_a_seed(model, tokenizer):
    prompt = tokenizer.encode("import", bos=True)
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=7)
    assert generate(model, tokenizer, prompt, params).token_ids == \
        generate(model, tokenizer, prompt, params).token_ids


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, 0.7, g)) for _ in range(300)}
    assert draws == {0, 1}
    draws = {int(sample_next(logits, 1.0, 1.0, g)) for _ in range(300)}
    assert draws == {0, 1, 2, 3}


def test_stop_sequences_and_end_of_sequence(model, tokenizer):
    prompt = tokenizer.encode("x", bos=True)
    free = generate(model, tokenizer, prompt, SamplingParams(max_new_tokens=10))
    assert len(free.text) > 2
    stop = free.text[1:3]
    stopped = generate(model, tokenizer, prompt, SamplingParams(max_new_tokens=10, stop=(stop,)))
    assert stopped.finish_reason == "stop"
    assert stop not in stopped.text and free.text.startswith(stopped.text)
    with torch.no_grad():
        model.lm_head.weight[EOS_ID] += 100.0  # make end-of-sequence certain
    eos = generate(model, tokenizer, prompt, SamplingParams(max_new_tokens=10))
    assert eos.token_ids == [EOS_ID] and eos.finish_reason == "stop" and eos.text == ""


def test_requests_beyond_the_context_are_refused(model, tokenizer, tiny_cfg):
    with pytest.raises(ValueError, match="exceeds the context"):
        generate(model, tokenizer, [1] * tiny_cfg.max_seq_len, SamplingParams(max_new_tokens=1))
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
