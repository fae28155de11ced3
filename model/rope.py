"""Rotary position embedding with long-context scaling (linear, NTK-aware, YaRN).

Uses the rotate-half layout (first half of each head's dims pairs with the second half), the
layout of Llama/Mixtral in Hugging Face, so exported weights need no permutation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from model.config import ModelConfig


def _yarn_inv_freq(base: float, dim: int, factor: float, original_len: int,
                   beta_fast: float = 32.0, beta_slow: float = 1.0) -> torch.Tensor:
    """YaRN (Peng et al. 2023): interpolate low frequencies, keep high ones, ramp between."""
    def correction_dim(n_rotations: float) -> float:
        # the dimension whose wavelength completes n_rotations over the original context
        return dim * math.log(original_len / (n_rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1.0 - ramp  # 1 keeps the original frequency, 0 interpolates it
    freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    return (1.0 / (factor * freqs)) * (1 - extrapolate) + (1.0 / freqs) * extrapolate


def rope_frequencies(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (head_dim/2,) and the attention scale applied to cos/sin."""
    dim, base, factor = cfg.head_dim, cfg.rope_theta, cfg.rope_factor
    exponents = torch.arange(0, dim, 2, dtype=torch.float32) / dim
    if cfg.rope_scaling == "none":
        return 1.0 / base ** exponents, 1.0
    if cfg.rope_scaling == "linear":  # position interpolation: positions divided by factor
        return 1.0 / (factor * base ** exponents), 1.0
    if cfg.rope_scaling == "ntk":  # NTK-aware: stretch the base so low frequencies interpolate
        return 1.0 / (base * factor ** (dim / (dim - 2))) ** exponents, 1.0
    inv_freq = _yarn_inv_freq(base, dim, factor, cfg.rope_original_max_seq_len)
    return inv_freq, (0.1 * math.log(factor) + 1.0) if factor > 1 else 1.0


class RotaryEmbedding(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        inv_freq, self.attention_scale = rope_frequencies(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (Dh/2,)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, T) int -> cos, sin (B, 1, T, Dh), in float32."""
        angles = positions.float()[..., None] * self.inv_freq  # (B, T, Dh/2)
        angles = torch.cat([angles, angles], dim=-1)  # (B, T, Dh)
        cos = (angles.cos() * self.attention_scale)[:, None]
        sin = (angles.sin() * self.attention_scale)[:, None]
        return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, Dh) rotated by position; computed in float32, returned in x's dtype."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)
