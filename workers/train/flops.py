"""FLOPs per token of the model and the machine's measured matmul peak, for utilisation (MFU)."""

from __future__ import annotations

import statistics
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


def matmul_times(dtype: torch.dtype = torch.float32, n: int = 2048, seconds: float = 1.0,
                 warmup: int = 2) -> list[float]:
    """Seconds of each (n x n) @ (n x n) product in `dtype`, repeated for about `seconds` (at least
    3 times) after `warmup` untimed products, with torch's current thread count."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    for _ in range(warmup):
        torch.matmul(a, b, out=out)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    return times


def measure_matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, seconds: float = 1.0,
                        warmup: int = 2, statistic: str = "best") -> float:
    """Measured matmul throughput in FLOP/s (2 n^3 per product).

    statistic="best" (default): the fastest repeat. This is a *peak*: on a shared machine other
    work can only slow a repeat down, never speed it up, so the fastest repeat is the closest to
    what the hardware delivers, and a utilisation quoted against it is conservative.
    statistic="median": the typical repeat, under whatever contention there was.
    """
    if statistic not in ("best", "median"):
        raise ValueError(f"statistic must be 'best' or 'median', got {statistic!r}")
    times = matmul_times(dtype, n, seconds, warmup)
    return 2.0 * n ** 3 / (min(times) if statistic == "best" else statistics.median(times))
