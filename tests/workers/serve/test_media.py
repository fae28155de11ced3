"""Decoding chat media and the chat format, without a server."""

import base64
import io
import wave

import numpy as np
import pytest
import torch
from PIL import Image

from model.encoders import MediaError, placeholder_count
from model.tokenizer import MediaPart
from workers.serve.chat import chat_parts, encode_chat
from workers.serve.media import audio_from_wav, image_from_data_url, video_from_frames
from workers.serve.schemas import ChatMessage
from workers.serve.streaming import TextDeltas


def data_url(pixels: np.ndarray, fmt: str = "PNG", mime: str = "image/png") -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return f"data:{mime};base64," + base64.b64encode(buffer.getvalue()).decode()


def wav(samples: np.ndarray, rate: int, channels: int = 1) -> str:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(channels), w.setsampwidth(samples.dtype.itemsize), w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return base64.b64encode(buffer.getvalue()).decode()


def test_images_fit_the_patch_grid(tiny_cfg):
    pixels = np.random.default_rng(0).integers(0, 255, (300, 150, 3), dtype=np.uint8)
    for url in (data_url(pixels), data_url(pixels, "JPEG", "image/jpeg")):
        image = image_from_data_url(url, tiny_cfg)
        largest = tiny_cfg.image_patch_size * tiny_cfg.image_max_patches_per_side
        assert image.dtype == torch.uint8 and image.shape == (3, largest, largest // 2)
        assert placeholder_count("image", image, tiny_cfg) > 0
    small = image_from_data_url(data_url(pixels[:10, :7]), tiny_cfg)  # rounded to whole patches
    assert small.shape == (3, 8, 4)


@pytest.mark.parametrize("url, message", [
    ("https://example.com/a.png", "data URL"),
    ("data:image/gif;base64,R0lGOD", "image/gif is not supported"),
    ("data:image/png;base64,%%%", "not valid base64"),
    ("data:image/png;base64," + base64.b64encode(b"\x89PNG broken").decode(), "undecodable"),
])
def test_bad_images_are_refused_with_the_reason(tiny_cfg, url, message):
    with pytest.raises(MediaError, match=message):
        image_from_data_url(url, tiny_cfg)


def test_a_jpeg_sent_as_png_is_refused(tiny_cfg):
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(MediaError, match="holds JPEG"):
        image_from_data_url(data_url(pixels, "JPEG", "image/png"), tiny_cfg)


def test_wav_of_any_rate_and_layout_becomes_log_mel_frames(tiny_cfg):
    t = np.arange(8000) / 8000.0
    tone = np.sin(2 * np.pi * 440 * t)
    mono16 = audio_from_wav(wav((tone * 20000).astype(np.int16), 8000), tiny_cfg)
    stereo16 = audio_from_wav(wav(np.repeat((tone * 20000).astype(np.int16), 2), 8000, 2), tiny_cfg)
    unsigned8 = audio_from_wav(wav((tone * 100 + 128).astype(np.uint8), 8000), tiny_cfg)
    assert mono16.shape == (101, tiny_cfg.audio_n_mels)  # 1 s at 16 kHz, 10 ms hop
    assert stereo16.shape == mono16.shape == unsigned8.shape
    assert np.allclose(stereo16.numpy(), mono16.numpy(), atol=1e-4)
    with pytest.raises(MediaError, match="undecodable WAV"):
        audio_from_wav(base64.b64encode(b"RIFF nonsense").decode(), tiny_cfg)


def test_video_frames_share_a_size_and_increasing_timestamps(tiny_cfg):
    frame = data_url(np.zeros((16, 16, 3), dtype=np.uint8))
    video = video_from_frames([frame, frame], [0.0, 2.5], tiny_cfg)
    assert video.shape == (2, 3, 16, 16)
    with pytest.raises(MediaError, match="increase"):
        video_from_frames([frame, frame], [1.0, 1.0], tiny_cfg)
    other = data_url(np.zeros((32, 16, 3), dtype=np.uint8))
    with pytest.raises(MediaError, match="one size"):
        video_from_frames([frame, other], [0.0, 1.0], tiny_cfg)


def test_text_chats_render_as_the_tokenizers_chat_prompt(tokenizer, tiny_cfg):
    messages = [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "},
                                             {"type": "text", "text": "there"}]}]
    parsed = [ChatMessage.model_validate(m) for m in messages]
    assert chat_parts(parsed, tiny_cfg) == [tokenizer.chat_prompt(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}])]
    ids, _ = encode_chat(parsed, tokenizer, tiny_cfg)
    assert ids == [1] + tokenizer.encode(chat_parts(parsed, tiny_cfg)[0])


def test_media_stand_where_their_parts_do(tokenizer, tiny_cfg):
    frame = data_url(np.zeros((16, 16, 3), dtype=np.uint8))
    message = ChatMessage.model_validate({"role": "user", "content": [
        {"type": "text", "text": "before"}, {"type": "image_url", "image_url": {"url": frame}},
        {"type": "text", "text": "after"},
        {"type": "video", "video": [{"image_url": {"url": frame}, "timestamp": 0.0},
                                    {"image_url": {"url": frame}, "timestamp": 4.0}]}]})
    parts = chat_parts([message], tiny_cfg)
    assert [type(p) for p in parts] == [str, MediaPart, str, MediaPart, str]
    assert parts[0].endswith("before") and parts[2] == "after"
    assert parts[3].kind == "video" and list(parts[3].timestamps) == [0.0, 4.0]
    ids, media = encode_chat([message], tokenizer, tiny_cfg)
    assert len(media.images) == 1 and len(media.videos) == 1
    assert "4.0s" in tokenizer.decode(ids)


def test_streamed_text_never_shows_a_stop_string(tokenizer):
    ids = tokenizer.encode("hello world, and more")
    deltas = TextDeltas(tokenizer, stop=("world",))
    sent = "".join(deltas.push(t) for t in ids)
    assert "world" not in sent and "wor" not in sent and sent == "hello "[:len(sent)]
    assert sent + deltas.finish("hello ") == "hello "
