"""Modality encoders: images, audio and video become sequences of d_model vectors that replace
the tokenizer's placeholder tokens.

image (3, H, W), uint8 or float in [0, 1] -> patches (H/p * W/p, 3*p*p) -> projection + 2-D position
audio (F, n_mels) log-mel frames (`audio_features` of a waveform, torch.stft) -> groups of g
      frames -> projection; features, not waveforms, so datasets store the compact frames
video (F, 3, H, W), like images -> per frame: image patches, average-pooled by cfg.video_pool
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig

MODALITIES = ("image", "audio", "video")


class MediaError(ValueError):
    """Media of the wrong shape, type or size, or not matching the placeholders."""


@dataclass
class Media:
    """Media for one forward pass, in the order their placeholders appear in the flattened batch."""

    images: list[torch.Tensor] = field(default_factory=list)  # each (3, H, W) uint8, or float in [0, 1]
    audios: list[torch.Tensor] = field(default_factory=list)  # each (F, n_mels) log-mel frames
    videos: list[torch.Tensor] = field(default_factory=list)  # each (F, 3, H, W) like images

    def of(self, kind: str) -> list[torch.Tensor]:
        return {"image": self.images, "audio": self.audios, "video": self.videos}[kind]

    def extend(self, other: "Media") -> None:
        for kind in MODALITIES:
            self.of(kind).extend(other.of(kind))


def _check_image(img: torch.Tensor, cfg: ModelConfig, what: str) -> tuple[int, int]:
    p = cfg.image_patch_size
    if img.dtype != torch.uint8 and not torch.is_floating_point(img) or img.dim() != 3 or img.shape[0] != 3:
        raise MediaError(f"{what} must be a uint8 or float tensor (3, H, W); "
                         f"got {tuple(img.shape)} {img.dtype}")
    H, W = img.shape[1:]
    if H % p or W % p:
        raise MediaError(f"{what} size {H}x{W} is not a multiple of the patch size {p}")
    gh, gw = H // p, W // p
    if max(gh, gw) > cfg.image_max_patches_per_side:
        raise MediaError(f"{what} is {gh}x{gw} patches; at most "
                         f"{cfg.image_max_patches_per_side} per side")
    return gh, gw


def placeholder_count(kind: str, data: torch.Tensor, cfg: ModelConfig) -> int:
    """How many placeholder tokens one item of this modality occupies (per frame for video)."""
    if kind == "image":
        gh, gw = _check_image(data, cfg, "image")
        return gh * gw
    if kind == "audio":
        if not torch.is_floating_point(data) or data.dim() != 2 or data.shape[1] != cfg.audio_n_mels:
            raise MediaError(f"audio must be float log-mel frames (F, {cfg.audio_n_mels}) from "
                             f"audio_features(); got {tuple(data.shape)} {data.dtype}")
        n = data.shape[0] // cfg.audio_frames_per_token
        if n < 1:
            raise MediaError(f"audio of {data.shape[0]} frames is shorter than one token "
                             f"({cfg.audio_frames_per_token} frames)")
        return n
    if kind == "video":
        if data.dim() != 4 or data.shape[0] < 1:
            raise MediaError(f"video must be (F, 3, H, W) with F >= 1; got {tuple(data.shape)}")
        gh, gw = _check_image(data[0], cfg, "video frame")
        if gh % cfg.video_pool or gw % cfg.video_pool:
            raise MediaError(f"video frame grid {gh}x{gw} is not divisible by video_pool={cfg.video_pool}")
        return (gh // cfg.video_pool) * (gw // cfg.video_pool)
    raise MediaError(f"unknown modality {kind!r}; expected one of {MODALITIES}")


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int) -> torch.Tensor:
    """Triangular filters on the HTK mel scale: (n_fft // 2 + 1, n_mels)."""
    def hz_to_mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)
    mels = torch.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)  # (n_mels + 2,) filter edges
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)[:, None]  # (n_freqs, 1)
    lower, center, upper = hz[:-2], hz[1:-1], hz[2:]
    rising = (freqs - lower) / (center - lower)
    falling = (upper - freqs) / (upper - center)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)  # (n_freqs, n_mels)


class ImageEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.p = cfg.image_patch_size
        self.proj = nn.Linear(3 * self.p * self.p, cfg.d_model)
        self.row = nn.Embedding(cfg.image_max_patches_per_side, cfg.d_model)
        self.col = nn.Embedding(cfg.image_max_patches_per_side, cfg.d_model)

    def patch_grid(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) -> (gh, gw, D)."""
        p = self.p
        gh, gw = image.shape[1] // p, image.shape[2] // p
        x = image.float() / 255.0 if image.dtype == torch.uint8 else image
        x = (x - 0.5) / 0.5
        x = x.reshape(3, gh, p, gw, p).permute(1, 3, 0, 2, 4).reshape(gh, gw, 3 * p * p)
        x = x.to(self.proj.weight.dtype)
        return self.proj(x) + self.row.weight[:gh, None] + self.col.weight[None, :gw]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.patch_grid(image).flatten(0, 1)  # (gh * gw, D)


def audio_features(wave: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Mono waveform (S,) at cfg.audio_sample_rate -> log-mel frames (1 + S // hop, n_mels).

    Log-compressed with an 80 dB floor below the loudest bin and scaled to roughly [-1, 1].
    """
    if not torch.is_floating_point(wave) or wave.dim() != 1:
        raise MediaError(f"a waveform must be a float mono tensor (S,); got {tuple(wave.shape)}")
    if wave.shape[0] < cfg.audio_n_fft // 2 + 1:
        raise MediaError(f"a waveform of {wave.shape[0]} samples is too short for one frame")
    window = torch.hann_window(cfg.audio_n_fft, device=wave.device)
    spec = torch.stft(wave.float(), cfg.audio_n_fft, cfg.audio_hop, window=window,
                      center=True, return_complex=True)  # (n_freqs, frames)
    fb = mel_filterbank(cfg.audio_n_mels, cfg.audio_n_fft, cfg.audio_sample_rate).to(wave.device)
    logmel = (fb.T @ spec.abs().square()).clamp_min(1e-10).log10()  # (n_mels, frames)
    logmel = torch.maximum(logmel, logmel.max() - 8.0)
    return ((logmel + 4.0) / 4.0).T


class AudioEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.group = cfg.audio_frames_per_token
        self.proj = nn.Linear(cfg.audio_n_mels * self.group, cfg.d_model)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(F, n_mels) log-mel frames -> (F // g, D)."""
        n = frames.shape[0] // self.group
        grouped = frames[: n * self.group].reshape(n, -1)  # (F / g, g * M)
        return self.proj(grouped.to(self.proj.weight.dtype))


class VideoEncoder(nn.Module):
    """Frames share the image encoder's patch projection, pooled to fewer tokens per frame."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pool = cfg.video_pool
        self.adapter = nn.Linear(cfg.d_model, cfg.d_model)  # tells frames from still images

    def forward(self, frames: torch.Tensor, image: ImageEncoder) -> torch.Tensor:
        grids = torch.stack([image.patch_grid(f) for f in frames])  # (F, gh, gw, D)
        pooled = F.avg_pool2d(grids.permute(0, 3, 1, 2), self.pool)  # (F, D, gh/k, gw/k)
        return self.adapter(pooled.flatten(2).transpose(1, 2))  # (F, n, D)


class MediaEncoders(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.image = ImageEncoder(cfg)
        self.audio = AudioEncoder(cfg)
        self.video = VideoEncoder(cfg)

    def encode(self, kind: str, items: list[torch.Tensor]) -> torch.Tensor:
        """All items of one modality -> (n_placeholders, D), in order."""
        outputs = []
        for item in items:
            placeholder_count(kind, item, self.cfg)  # validates shape and type
            if kind == "video":
                outputs.append(self.video(item, self.image).flatten(0, 1))
            else:
                outputs.append(getattr(self, kind)(item))
        return torch.cat(outputs) if outputs else torch.empty(0, self.cfg.d_model)
