"""Chat messages -> the model's chat format, with media where their parts stand:

<|bos|><|system|>...<|end|><|user|>text <image> text<|end|>...<|assistant|>

as model/tokenizer.py chat_prompt renders text-only chats (the SFT data's format); "developer"
is the system role under its newer name.
"""

from __future__ import annotations

from model.config import ModelConfig
from model.encoders import Media, MediaError
from model.tokenizer import MediaPart, Tokenizer
from workers.serve.errors import APIError
from workers.serve.media import audio_from_wav, image_from_data_url, video_from_frames
from workers.serve.schemas import AudioPart, ChatMessage, ImagePart, TextPart, VideoPart

END_OF_TURN = "<|end|>"


def _media(part: ImagePart | AudioPart | VideoPart, cfg: ModelConfig) -> MediaPart:
    if isinstance(part, ImagePart):
        return MediaPart("image", image_from_data_url(part.image_url.url, cfg))
    if isinstance(part, AudioPart):
        return MediaPart("audio", audio_from_wav(part.input_audio.data, cfg))
    frames = video_from_frames([f.image_url.url for f in part.video],
                               [f.timestamp for f in part.video], cfg)
    return MediaPart("video", frames, timestamps=[f.timestamp for f in part.video])


def chat_parts(messages: list[ChatMessage], cfg: ModelConfig) -> list[str | MediaPart]:
    """Text (adjacent pieces joined) and decoded media in reading order; undecodable media are a
    400 naming the part."""
    parts: list[str | MediaPart] = []

    def add_text(text: str) -> None:
        if parts and isinstance(parts[-1], str):
            parts[-1] += text
        else:
            parts.append(text)

    for i, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        add_text(f"<|{role}|>")
        content = [TextPart(type="text", text=message.content)] \
            if isinstance(message.content, str) else message.content
        for j, part in enumerate(content):
            if isinstance(part, TextPart):
                add_text(part.text)
                continue
            where = f"messages.{i}.content.{j}"
            try:
                parts.append(_media(part, cfg))
            except MediaError as e:
                raise APIError(400, f"{where}: {e}", param=where, code="invalid_media") from None
        add_text(END_OF_TURN)
    add_text("<|assistant|>")
    return parts


def encode_chat(messages: list[ChatMessage], tokenizer: Tokenizer,
                cfg: ModelConfig) -> tuple[list[int], Media]:
    try:
        return tokenizer.encode_interleaved(chat_parts(messages, cfg), cfg, bos=True)
    except MediaError as e:
        raise APIError(400, f"messages: {e}", param="messages", code="invalid_media") from None
