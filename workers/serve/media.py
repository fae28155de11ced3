"""Media in chat requests -> the tensors the model's encoders take.

Images come as data URLs (PNG or JPEG, at most MAX_IMAGE_PIXELS; no fetching of remote URLs) and
are scaled down to fit the encoder's patch grid, each side a multiple of the patch size; audio
comes as base64 WAV (PCM or float, 8 to 48 kHz, any channel count) and becomes log-mel frames at
the model's sample rate; a video is its frames (images of one size) with their timestamps.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from scipy.io import wavfile
from scipy.signal import resample_poly

from model.config import ModelConfig
from model.encoders import MediaError, audio_features

IMAGE_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG"}
# Limits on what one part may make the replica decode: an image's pixels (read from its header,
# before decoding; PIL's own decompression-bomb warning is an error too) and a WAV's sample rate
MAX_IMAGE_PIXELS = 4096 * 4096
AUDIO_RATES_HZ = (8_000, 48_000)
DATA_URL = re.compile(r"data:(?P<mime>[\w/.+-]+);base64,(?P<data>.*)", re.DOTALL)


def _b64(data: str, what: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MediaError(f"{what} is not valid base64 ({e})") from None


def image_from_data_url(url: str, cfg: ModelConfig, side_multiple: int = 1) -> torch.Tensor:
    """A PNG/JPEG data URL -> (3, H, W) uint8, H and W multiples of patch * side_multiple."""
    match = DATA_URL.fullmatch(url)
    if match is None:
        raise MediaError("image_url must be a data URL (data:image/png;base64,... or image/jpeg); "
                         "remote URLs are not fetched")
    mime = match["mime"].lower()
    if mime not in IMAGE_FORMATS:
        raise MediaError(f"image type {mime} is not supported; send image/png or image/jpeg")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(_b64(match["data"], "the image data"))) as img:
                if img.format != IMAGE_FORMATS[mime]:
                    raise MediaError(f"the data URL says {mime} but holds "
                                     f"{img.format or 'no image'}")
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise MediaError(f"an image of {img.width}x{img.height} pixels is over the "
                                     f"limit of {MAX_IMAGE_PIXELS} pixels")
                rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        raise MediaError(f"undecodable {mime} image ({e})") from None
    step = cfg.image_patch_size * side_multiple
    largest = cfg.image_patch_size * cfg.image_max_patches_per_side // step * step
    scale = min(1.0, largest / max(rgb.size))
    width, height = (max(step, math.floor(s * scale / step) * step) for s in rgb.size)
    if (width, height) != rgb.size:
        rgb = rgb.resize((width, height), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()  # (3, H, W)


def audio_from_wav(data: str, cfg: ModelConfig) -> torch.Tensor:
    """Base64 WAV -> log-mel frames (F, n_mels) of its mono mix at cfg.audio_sample_rate."""
    try:
        rate, samples = wavfile.read(io.BytesIO(_b64(data, "input_audio.data")))
    except (ValueError, EOFError, OSError) as e:
        raise MediaError(f"undecodable WAV audio ({e})") from None
    if samples.size == 0:
        raise MediaError("the WAV audio holds no samples")
    if not AUDIO_RATES_HZ[0] <= rate <= AUDIO_RATES_HZ[1]:
        raise MediaError(f"a WAV sample rate of {rate} Hz is outside the {AUDIO_RATES_HZ[0]}-"
                         f"{AUDIO_RATES_HZ[1]} Hz this endpoint takes")
    if samples.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
        wave = (samples.astype(np.float64) - 128.0) / 128.0
    elif np.issubdtype(samples.dtype, np.integer):
        wave = samples / float(-np.iinfo(samples.dtype).min)
    else:
        wave = samples.astype(np.float64)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    if rate != cfg.audio_sample_rate:
        common = math.gcd(rate, cfg.audio_sample_rate)
        wave = resample_poly(wave, cfg.audio_sample_rate // common, rate // common)
    return audio_features(torch.from_numpy(wave.astype(np.float32)), cfg)


def video_from_frames(urls: list[str], timestamps: list[float], cfg: ModelConfig) -> torch.Tensor:
    """Frames as data URLs, in order -> (F, 3, H, W) uint8; timestamps must increase."""
    if any(b <= a for a, b in zip(timestamps, timestamps[1:])):
        raise MediaError(f"video frame timestamps must increase; got {timestamps}")
    frames = [image_from_data_url(u, cfg, side_multiple=cfg.video_pool) for u in urls]
    sizes = {tuple(f.shape) for f in frames}
    if len(sizes) > 1:
        raise MediaError(f"video frames must share one size; got {sorted(sizes)}")
    return torch.stack(frames)
