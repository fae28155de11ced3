"""Media preprocessing shared by every reader: images to fixed squares, audio to log-mel
frames, videos to frames sampled at a fixed rate. Inputs are numpy arrays; outputs MediaItems
in the compact form the shards store (see records.MEDIA_DTYPES)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from model.config import ModelConfig
from model.encoders import audio_features, placeholder_count
from workers.data.readers import ReadContext
from workers.data.records import MediaItem


def fit_image(pixels: np.ndarray, size: int) -> np.ndarray:
    """(H, W), (H, W, 3) or (H, W, 4) pixels, uint8 or float in [0, 1] -> (3, size, size) uint8.

    Centre-cropped to a square, then resized with antialiasing.
    """
    if pixels.dtype != np.uint8:
        pixels = (np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8)
    img = Image.fromarray(pixels).convert("RGB")
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def image_item(pixels: np.ndarray, ctx: ReadContext) -> MediaItem:
    return MediaItem("image", fit_image(pixels, ctx.image_size))


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling (polyphase) of a mono float waveform."""
    if rate_in == rate_out:
        return wave.astype(np.float32)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(rate_in, rate_out)
    return resample_poly(wave, rate_out // g, rate_in // g).astype(np.float32)


def audio_item(wave: np.ndarray, sample_rate: int, ctx: ReadContext) -> MediaItem:
    """Mono float waveform at any rate -> float16 log-mel frames at the model's settings."""
    wave = resample(np.asarray(wave, dtype=np.float32), sample_rate, ctx.model.audio_sample_rate)
    wave = wave[: int(ctx.audio_max_seconds * ctx.model.audio_sample_rate)]
    frames = audio_features(torch.from_numpy(wave), ctx.model)
    return MediaItem("audio", frames.numpy())


def video_item(frames: list[np.ndarray], fps_in: float, ctx: ReadContext) -> MediaItem:
    """Frames at fps_in -> up to ctx.video_frames frames at ctx.video_fps, each fit to a square."""
    step = max(fps_in / ctx.video_fps, 1.0)
    picks = [int(i * step) for i in range(ctx.video_frames) if int(i * step) < len(frames)]
    fps_out = fps_in / step
    stacked = np.stack([fit_image(frames[i], ctx.image_size) for i in picks])  # (F, 3, S, S)
    return MediaItem("video", stacked, fps=fps_out)


def placeholder_tokens(item: MediaItem, cfg: ModelConfig) -> int:
    """Placeholder tokens the item occupies in the model's input (every frame, for video);
    raises model.encoders.MediaError if the model cannot take it."""
    data = torch.from_numpy(item.array.astype(np.float32) if item.kind == "audio" else item.array.copy())
    n = placeholder_count(item.kind, data, cfg)  # per frame, for video
    return n * item.array.shape[0] if item.kind == "video" else n
