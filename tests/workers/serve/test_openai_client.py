"""The official `openai` package against the live endpoint: what it returns equals in-process
generation and scoring on the same checkpoint."""

import base64
import io
import wave

import numpy as np
import pytest
from openai import OpenAI
from PIL import Image

from model.generate import SamplingParams, generate, score

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0, timeout=60)


def greedy(server, prompt_ids, n):
    return generate(server.transformer, server.tokenizer, prompt_ids, SamplingParams(max_new_tokens=n))


def test_models_lists_the_served_model(client, server):
    assert [m.id for m in client.models.list().data] == [server.model]


def test_completions_equal_in_process_greedy_generation(client, server):
    prompts = ["def main():", "import os"]
    reply = client.completions.create(model=server.model, prompt=prompts, max_tokens=8,
                                      temperature=0, n=2)
    assert len(reply.choices) == 4 and [c.index for c in reply.choices] == [0, 1, 2, 3]
    for choice in reply.choices:
        prompt_ids = server.tokenizer.encode(prompts[choice.index // 2], bos=True)
        expected = greedy(server, prompt_ids, 8)
        assert choice.text == expected.text and choice.finish_reason == expected.finish_reason
    assert reply.usage.prompt_tokens == sum(len(server.tokenizer.encode(p, bos=True)) for p in prompts)
    assert reply.usage.completion_tokens == sum(len(greedy(server, server.tokenizer.encode(
        prompts[c.index // 2], bos=True), 8).token_ids) for c in reply.choices)


def test_token_id_prompts_with_echo_and_logprobs_score_every_token(client, server):
    ids = server.tokenizer.encode("def add(a, b):\n    return a + b")
    reply = client.completions.create(model=server.model, prompt=ids, max_tokens=1, temperature=0,
                                      logprobs=3, echo=True)
    lp = reply.choices[0].logprobs
    assert len(lp.tokens) == len(ids) + 1 and lp.token_logprobs[0] is None
    assert lp.token_logprobs[1:len(ids)] == score(server.transformer, ids).tolist()
    assert lp.top_logprobs[0] is None  # top 3 by text: tokens decoding alike share an entry
    assert all(1 <= len(t) <= 3 and max(t.values()) >= p
               for t, p in zip(lp.top_logprobs[1:], lp.token_logprobs[1:]))
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    expected = greedy(server, ids, 1)
    assert lp.token_logprobs[-1] == pytest.approx(expected.logprobs[0], abs=1e-5)
    assert reply.choices[0].text == server.tokenizer.decode(ids) + expected.text


def test_seeded_sampling_is_reproducible(client, server):
    kwargs = dict(model=server.model, prompt="class", max_tokens=12, temperature=1.0, top_p=0.9,
                  seed=7)
    first, second = (client.completions.create(**kwargs) for _ in range(2))
    assert first.choices[0].text == second.choices[0].text
    expected = generate(server.transformer, server.tokenizer, server.tokenizer.encode("class", bos=True),
                        SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7))
    assert first.choices[0].text == expected.text


def test_completion_stream_adds_up_to_the_whole_text(client, server):
    whole = client.completions.create(model=server.model, prompt="for i in", max_tokens=10,
                                      temperature=0)
    chunks = list(client.completions.create(model=server.model, prompt="for i in", max_tokens=10,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def chat_ids(server, text):
    return server.tokenizer.encode_interleaved([server.tokenizer.chat_prompt(
        [{"role": "user", "content": text}])], server.transformer.cfg)[0]


def test_chat_equals_in_process_generation_and_streams(client, server):
    messages = [{"role": "user", "content": "What does len() return?"}]
    reply = client.chat.completions.create(model=server.model, messages=messages, max_tokens=10,
                                           temperature=0, logprobs=True, top_logprobs=2)
    expected = generate(server.transformer, server.tokenizer, chat_ids(server, messages[0]["content"]),
                        SamplingParams(max_new_tokens=10, stop=("<|end|>",)), top_logprobs=2)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert [t.logprob for t in choice.logprobs.content] == pytest.approx(expected.logprobs, abs=1e-5)
    assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
    assert reply.usage.prompt_tokens == len(chat_ids(server, messages[0]["content"]))

    stream = client.chat.completions.create(model=server.model, messages=messages, max_tokens=10,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    assert chunks[-1].usage.completion_tokens == len(expected.token_ids)


def png_data_url(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def wav_base64(seconds: float, rate: int = 8000) -> str:
    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * 440 * t) * 20000).astype(np.int16)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate), w.writeframes(samples.tobytes())
    return base64.b64encode(buffer.getvalue()).decode()


def first_token_logprobs(client, server, content):
    reply = client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": content}], max_tokens=1,
        temperature=0, logprobs=True, top_logprobs=5)
    return {t.token: t.logprob for t in reply.choices[0].logprobs.content[0].top_logprobs}


def test_images_audio_and_video_reach_the_model(client, server):
    rng = np.random.default_rng(0)
    text_only = first_token_logprobs(client, server, "Describe this.")
    image = [{"type": "text", "text": "Describe this."},
             {"type": "image_url", "image_url": {"url": png_data_url(
                 rng.integers(0, 255, (30, 45, 3), dtype=np.uint8))}}]
    audio = [{"type": "text", "text": "Describe this."},
             {"type": "input_audio", "input_audio": {"data": wav_base64(0.5), "format": "wav"}}]
    frames = [{"image_url": {"url": png_data_url(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))},
               "timestamp": t} for t in (0.0, 0.5, 1.5)]
    video = [{"type": "text", "text": "Describe this."}, {"type": "video", "video": frames}]
    seen = [text_only] + [first_token_logprobs(client, server, c) for c in (image, audio, video)]
    for i, a in enumerate(seen):
        for b in seen[i + 1:]:
            assert a != b  # each medium changes the next-token distribution


def test_a_client_that_leaves_mid_stream_does_not_stop_the_server(client, server):
    stream = client.completions.create(model=server.model, prompt="while True:", max_tokens=400,
                                       temperature=1.0, stream=True)
    for _, _chunk in zip(range(2), stream):
        pass
    stream.close()  # the sequence leaves the batch at its next token
    reply = client.completions.create(model=server.model, prompt="x", max_tokens=3, temperature=0)
    assert reply.choices[0].finish_reason in ("length", "stop")
