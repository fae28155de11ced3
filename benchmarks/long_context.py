"""Chunked-prefill time and peak memory of the `small` preset as the context grows.

What it measures: the `small` preset (d_model 256, 4 layers, 8 heads / 2 KV heads, 8 experts
top-2; max_seq_len raised to 65552, random weights, eval, no_grad, fp32) prefills a random prompt
of each length with `model.generate.prefill` into a `KVCache` sized to that length, `--chunk`
tokens per forward pass (default 1024, the `SamplingParams.prefill_chunk` default).
Each length runs in a fresh subprocess (this script re-invoked with a hidden flag), so peak memory
is that process's own: `ru_maxrss` at the end minus `ru_maxrss` once the model is built, i.e. what
the context costs (KV cache, the prompt's embeddings, masks, attention and MoE workspaces).
Prefill time is the median of a few repeats after a one-chunk warm-up (one repeat at 64K).
A last subprocess times one attention call (`scaled_dot_product_attention`, one chunk of queries
against the longest context) with the model's boolean mask, with the same mask as a prebuilt
float additive mask, and with no mask (the same FLOPs), and the extra peak memory the boolean mask
costs: this isolates what the mask does to the CPU attention kernel.

How to read it:
  * `bytes_per_token`: slope of a least-squares line through (length, extra peak bytes); `r2` near
    1 means memory grows linearly in the context (no T x T buffer; per chunk the attention work is
    chunk x T). Compare with `kv_cache_bytes_per_token` (analytic, 2 * layers * kv_heads *
    head_dim * 4 bytes): the difference is what prefill keeps per token besides the cache
    (`expected_bytes_per_token` itemises the analytic terms).
  * `max_context_in_16gb` = (16 GiB - model and runtime RSS - the fit's intercept)
    / bytes_per_token: the longest prompt this prefill could take in 16 GiB of RAM, extrapolated
    from the fit.
  * `tokens_per_s`: prefill throughput per length; it falls with length as attention (quadratic in
    total) takes over from the per-token MoE and projections.
  * `sdpa_bool_over_no_mask`: time of the masked attention call over the unmasked one (same FLOPs).

    python benchmarks/long_context.py           # 1K, 4K, 16K, 64K tokens (several minutes)
    python benchmarks/long_context.py --quick   # 1K, 2K, 4K, 8K tokens
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys

from _common import emit_json, machine_info, parse_args, print_table, time_interleaved, \
    time_samples, use_all_cores

import numpy as np
import torch
import torch.nn.functional as F

from model.attention import KVCache, attention_mask
from model.config import get_preset
from model.generate import prefill
from model.tokenizer import SPECIAL_TOKENS
from model.transformer import Transformer

GIB = 2 ** 30
MAX_SEQ_LEN = 65536 + 16  # one config for every length, so the model's memory is the same


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def config():
    return get_preset("small", max_seq_len=MAX_SEQ_LEN)


# ---------------------------------------------------------------------------------------------
# subprocess workers: each prints one JSON line


def prefill_worker(length: int, chunk: int, repeats: int) -> dict:
    threads = use_all_cores()
    cfg = config()
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    model_rss = maxrss_bytes()  # the baseline: process + torch + model weights
    gen = torch.Generator().manual_seed(length)
    ids = torch.randint(len(SPECIAL_TOKENS), cfg.vocab_size, (1, length), generator=gen)

    def run(n: int) -> None:
        cache = KVCache(cfg, 1, n)
        prefill(model, ids[:, :n], cache, chunk)

    with torch.no_grad():
        run(min(length, chunk))  # warm-up: one chunk, no more memory than the timed runs
        times = time_samples(lambda: run(length), warmup=0, repeats=repeats)
    peak_rss = maxrss_bytes()
    return {"length": length, "chunk": chunk, "repeats": repeats, "threads": threads,
            "seconds": statistics.median(times), "all_seconds": times,
            "model_rss_bytes": model_rss, "peak_rss_bytes": peak_rss,
            "extra_bytes": peak_rss - model_rss,
            "kv_cache_bytes": length * kv_bytes_per_token(cfg)}


def sdpa_worker(length: int, chunk: int, repeats: int) -> dict:
    """One chunk of queries against `length` keys, as the last chunk of a prefill sees it."""
    threads = use_all_cores()
    cfg = config()
    gen = torch.Generator().manual_seed(0)
    H, Hkv, Dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    q = torch.randn(1, H, chunk, Dh, generator=gen)
    k = torch.randn(1, Hkv, length, Dh, generator=gen)
    v = torch.randn(1, Hkv, length, Dh, generator=gen)
    bool_mask = attention_mask(None, chunk, length - chunk, q.device)  # the model's mask (chunk, L)
    float_mask = torch.zeros(chunk, length).masked_fill_(~bool_mask, float("-inf"))

    def attend(mask):
        return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

    variants = {"no_mask": attend(None), "float_mask": attend(float_mask),
                "bool_mask": attend(bool_mask)}
    variants["no_mask"]()  # kernels and thread pool up before the baseline
    extra = {}
    for name, fn in variants.items():  # ru_maxrss only grows: each figure is over all before it
        before = maxrss_bytes()
        fn()
        extra[name] = maxrss_bytes() - before
    times = time_interleaved(variants, warmup=0, repeats=repeats)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        variants["bool_mask"]()
    kernels = sorted({e.key for e in prof.key_averages() if "attention" in e.key})
    return {"length": length, "chunk": chunk, "threads": threads, "seconds": times,
            "extra_peak_bytes": extra, "kernels": kernels,
            "float_mask_bytes": float_mask.numel() * float_mask.element_size()}


def run_worker(kind: str, length: int, chunk: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--_worker", kind, "--length", str(length), "--chunk",
           str(chunk), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"worker {' '.join(cmd[2:])} failed with exit status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# analysis


def kv_bytes_per_token(cfg, bytes_per_value: int = 4) -> int:
    """Keys and values of every layer for one position, fp32."""
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * bytes_per_value


def expected_bytes_per_token(cfg, chunk: int) -> dict[str, int]:
    """Analytic per-context-token memory of a chunked prefill, by what holds it."""
    return {
        "kv_cache": kv_bytes_per_token(cfg),
        "prompt_embeddings (prefill embeds the whole prompt first)": cfg.d_model * 4,
        "prompt ids (int64)": 8,
        "bool mask (chunk x L), one per forward": chunk,
        "float copy of the mask, if SDPA converts it (chunk x L x 4)": chunk * 4,
    }


def linear_fit(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """Least squares y = slope * x + intercept; returns slope, intercept, R^2."""
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = np.polyfit(xa, ya, 1)
    residual = ya - (slope * xa + intercept)
    total = ((ya - ya.mean()) ** 2).sum()
    r2 = 1.0 - (residual ** 2).sum() / total if total > 0 else 1.0
    return float(slope), float(intercept), float(r2)


def main() -> None:
    def add_arguments(parser):
        parser.add_argument("--chunk", type=int, default=1024, help="prefill chunk (tokens)")
        parser.add_argument("--_worker", choices=("prefill", "sdpa"), help=argparse.SUPPRESS)
        parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
        parser.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)

    args = parse_args(__doc__.split("\n\n")[0], add_arguments)
    if args._worker:
        worker = prefill_worker if args._worker == "prefill" else sdpa_worker
        print(json.dumps(worker(args.length, args.chunk, args.repeats)))
        return

    threads = use_all_cores()
    cfg = config()
    repeats_at = ({1024: 3, 2048: 3, 4096: 2, 8192: 2} if args.quick
                  else {1024: 5, 4096: 3, 16384: 2, 65536: 1})
    runs = []
    for length, repeats in repeats_at.items():
        runs.append(run_worker("prefill", length, args.chunk, repeats))
        r = runs[-1]
        print(f"prefill {length:>6} tokens: {r['seconds']:.2f} s, "
              f"extra peak {r['extra_bytes'] / 2 ** 20:.1f} MiB", flush=True)
    lengths = [r["length"] for r in runs]
    slope, intercept, r2 = linear_fit(lengths, [r["extra_bytes"] for r in runs])
    model_rss = float(np.median([r["model_rss_bytes"] for r in runs]))
    base = model_rss + max(intercept, 0.0)
    max_context = int((16 * GIB - base) / slope) if slope > 0 else None
    kv_per_token = kv_bytes_per_token(cfg)
    expected = expected_bytes_per_token(cfg, args.chunk)

    sdpa = run_worker("sdpa", lengths[-1], args.chunk, 3 if args.quick else 5)
    st, se = sdpa["seconds"], sdpa["extra_peak_bytes"]

    print_table(
        f"Chunked prefill, small preset (fp32, chunk {args.chunk}, {threads} threads), "
        f"one fresh process per length",
        ["tokens", "repeats", "prefill s", "tokens/s", "extra peak MiB", "of which KV cache MiB",
         "extra bytes/token"],
        [[r["length"], r["repeats"], f"{r['seconds']:.2f}", f"{r['length'] / r['seconds']:.0f}",
          f"{r['extra_bytes'] / 2 ** 20:.1f}", f"{r['kv_cache_bytes'] / 2 ** 20:.1f}",
          f"{r['extra_bytes'] / r['length']:.0f}"] for r in runs],
        caption=f"model + runtime RSS (baseline): {model_rss / 2 ** 20:.0f} MiB")
    print_table("Memory vs context length (least-squares line through the extra peak)",
                ["figure", "value"], [
                    ["bytes_per_token (slope)", f"{slope:.0f}"],
                    ["intercept", f"{intercept / 2 ** 20:.1f} MiB"],
                    ["R^2", f"{r2:.5f}"],
                    ["kv_cache_bytes_per_token (analytic)", f"{kv_per_token}"],
                    ["expected bytes/token (analytic sum below)", f"{sum(expected.values())}"],
                    ["max_context_in_16gb (extrapolated)",
                     f"{max_context:,}" if max_context else "-"],
                ])
    print_table(f"Analytic per-token terms (chunk {args.chunk})", ["term", "bytes/token"],
                [[k, v] for k, v in expected.items()])
    print_table(
        f"One attention call: {args.chunk} queries x {sdpa['length']} keys, 8 q / 2 kv heads, "
        f"median of {3 if args.quick else 5}",
        ["mask", "ms", "vs no mask", "extra peak MiB"],
        [[name, f"{st[name] * 1e3:.1f}", f"{st[name] / st['no_mask']:.2f}",
          f"{se[name] / 2 ** 20:.1f}"] for name in ("no_mask", "float_mask", "bool_mask")],
        caption=f"kernel: {', '.join(sdpa['kernels'])}; a float copy of the mask would be "
                f"{sdpa['float_mask_bytes'] / 2 ** 20:.0f} MiB")

    emit_json({
        "bytes_per_token": round(slope, 1),
        "r2": round(r2, 6),
        "intercept_bytes": round(intercept),
        "max_context_in_16gb": max_context,
        "kv_cache_bytes_per_token": kv_per_token,
        "expected_bytes_per_token": sum(expected.values()),
        "model_rss_bytes": round(model_rss),
        "tokens_per_s": {str(r["length"]): round(r["length"] / r["seconds"], 1) for r in runs},
        "prefill_seconds": {str(r["length"]): round(r["seconds"], 3) for r in runs},
        "extra_peak_bytes": {str(r["length"]): r["extra_bytes"] for r in runs},
        "chunk": args.chunk,
        "sdpa_length": sdpa["length"],
        "sdpa_bool_over_no_mask": round(st["bool_mask"] / st["no_mask"], 3),
        "sdpa_float_over_no_mask": round(st["float_mask"] / st["no_mask"], 3),
        "sdpa_bool_mask_extra_peak_bytes": se["bool_mask"],
        "sdpa_kernels": sdpa["kernels"],
        "torch_threads": threads,
        "cpu_model": machine_info()["cpu_model"],
        "load_average_1min": machine_info()["load_average_1min"],
        "quick": args.quick,
    })


if __name__ == "__main__":
    main()
