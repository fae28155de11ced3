"""FLOPs per token of the model and the machine's measured matmul peak, for utilisation (MFU)."""

from __future__ import annotations

import time

import torch

from model.config import ModelConfig


def training_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per token: 6 x active matmul parameters + causal attention.

    Counts what a token actually computes: k experts (plus the shared expert), not all E.
    Embedding lookups and the encoders are excluded; the LM head is included.
    """
    d, h = cfg.d_model, cfg.head_dim
    attn_proj = d * h * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
    expert = 3 * d * cfg.expert_hidden
    moe = (cfg.top_k + cfg.n_shared_experts) * expert + d * cfg.n_experts
    n_moe = cfg.n_layers - cfg.n_dense_layers
    matmul_params = (attn_proj * cfg.n_layers + n_moe * moe
                     + cfg.n_dense_layers * 3 * d * cfg.dense_hidden + d * cfg.vocab_size)
    # QK^T and AV: 2 * 2 * T * d per token per layer, halved by the causal mask; x3 for backward
    attention = 3 * 2 * cfg.n_layers * seq_len * d
    return 6 * matmul_params + attention


def measure_matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048,
                        seconds: float = 1.0) -> float:
    """Sustained FLOP/s of an n x n matmul on this machine with torch's current threads."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or count < 3:
        a @ b
        count += 1
    return 2 * n ** 3 * count / elapsed
