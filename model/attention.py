"""Grouped-query attention over scaled_dot_product_attention, with a KV cache and masks for
packed documents and chunked prefill."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig
from model.rope import apply_rope


class KVCache:
    """Keys and values of every layer for one batch, preallocated to `max_len` positions."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        shape = (batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)  # (B, Hkv, L, Dh)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.max_len = max_len
        self.length = 0  # positions filled so far

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's k, v (B, Hkv, T, Dh); return all cached so far (B, Hkv, L+T, Dh)."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} requested")
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


def attention_mask(doc_ids: torch.Tensor | None, query_len: int, past_len: int,
                   device: torch.device) -> torch.Tensor | None:
    """Boolean mask (True = may attend), or None when plain causal attention suffices.

    doc_ids (B, T): tokens attend only within their own document (packed training sequences).
    past_len > 0: queries at positions past_len.. attend to every cached key before them
    (chunked prefill), a case `is_causal` does not cover because it aligns to the top-left.
    """
    if doc_ids is not None:
        if past_len:
            raise ValueError("document masking applies to whole sequences, not to a KV cache")
        causal = torch.ones(query_len, query_len, dtype=torch.bool, device=device).tril()
        same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
        return (same_doc & causal)[:, None]  # (B, 1, T, T)
    if past_len == 0 or query_len == 1:  # plain causal, or one new token that sees everything
        return None
    q_pos = torch.arange(past_len, past_len + query_len, device=device)
    k_pos = torch.arange(past_len + query_len, device=device)
    return k_pos[None, :] <= q_pos[:, None]  # (T, L)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, Dh)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, Dh)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, Hkv, L, Dh)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                           enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, D)
