"""Measured matmul peak of this CPU in fp32 and bf16 (GFLOP/s), with torch using every core.

What it measures: square (n x n) @ (n x n) products at a few sizes, in float32 and bfloat16,
repeated for a second or so per cell, converted to GFLOP/s (2 n^3 FLOPs per product); also whether
the CPU has the instructions that make bf16 fast (avx512_bf16, AMX, from /proc/cpuinfo) and
torch's thread count.

How to read it: `fp32_matmul_gflops` / `bf16_matmul_gflops` are the peak: the fastest repeat at
the best size (other work on a shared machine can only slow a repeat down), the ceiling the other
benchmarks' utilisation figures are quoted against (they call `_common.measure_matmul_peak` in
their own run). The `*_median_gflops` figures are the typical repeat; a large gap between the two
means the machine was busy. `bf16_over_fp32` (peaks) > 1 means bf16 compute pays off on this CPU;
about 1 or below means it does not (bf16 then only saves memory).

    python benchmarks/cpu_peak.py            # sizes 1024, 2048, 4096
    python benchmarks/cpu_peak.py --quick    # sizes 1024, 2048, shorter repeats
"""

from __future__ import annotations

import statistics

from _common import emit_json, machine_info, matmul_times, parse_args, print_table, use_all_cores

import torch


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0])
    threads = use_all_cores()
    sizes = (1024, 2048) if args.quick else (1024, 2048, 4096)
    seconds = 0.5 if args.quick else 1.5
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}

    best: dict[str, dict[str, float]] = {name: {} for name in dtypes}  # GFLOP/s, fastest repeat
    median: dict[str, dict[str, float]] = {name: {} for name in dtypes}  # GFLOP/s, median repeat
    for n in sizes:
        for name, dtype in dtypes.items():
            times = matmul_times(dtype, n=n, seconds=seconds)
            best[name][str(n)] = 2 * n ** 3 / min(times) / 1e9
            median[name][str(n)] = 2 * n ** 3 / statistics.median(times) / 1e9
    peak = {name: max(v.values()) for name, v in best.items()}
    typical = {name: max(v.values()) for name, v in median.items()}

    info = machine_info()
    print_table(
        f"Square matmul throughput, GFLOP/s: peak (fastest repeat) and median, "
        f">= {seconds:g} s per cell, {threads} torch threads",
        ["n", "fp32 peak", "fp32 median", "bf16 peak", "bf16 median", "bf16 / fp32 (peak)"],
        [[n, f"{best['fp32'][str(n)]:.1f}", f"{median['fp32'][str(n)]:.1f}",
          f"{best['bf16'][str(n)]:.1f}", f"{median['bf16'][str(n)]:.1f}",
          f"{best['bf16'][str(n)] / best['fp32'][str(n)]:.2f}"] for n in sizes])
    flags = info["cpu_flags"]
    print_table("Machine", ["property", "value"], [
        ["CPU", info["cpu_model"]],
        ["cores available / torch threads", f"{info['cores_available']} / {threads}"],
        ["torch / CPU capability", f"{info['torch_version']} / {info['torch_cpu_capability']}"],
        ["avx512f / avx512_bf16", f"{flags['avx512f']} / {flags['avx512_bf16']}"],
        ["amx_tile / amx_bf16", f"{flags['amx_tile']} / {flags['amx_bf16']}"],
    ])

    emit_json({
        "fp32_matmul_gflops": round(peak["fp32"], 2),
        "bf16_matmul_gflops": round(peak["bf16"], 2),
        "bf16_over_fp32": round(peak["bf16"] / peak["fp32"], 3),
        "fp32_matmul_median_gflops": round(typical["fp32"], 2),
        "bf16_matmul_median_gflops": round(typical["bf16"], 2),
        "per_size_peak_gflops": {k: {n: round(v, 2) for n, v in d.items()}
                                 for k, d in best.items()},
        "per_size_median_gflops": {k: {n: round(v, 2) for n, v in d.items()}
                                   for k, d in median.items()},
        "sizes": list(sizes),
        "avx512_bf16": flags["avx512_bf16"],
        "amx_bf16": flags["amx_bf16"],
        "amx_tile": flags["amx_tile"],
        "torch_threads": threads,
        "cpu_model": info["cpu_model"],
        "torch_cpu_capability": info["torch_cpu_capability"],
        "load_average_1min": info["load_average_1min"],
        "quick": args.quick,
    })


if __name__ == "__main__":
    main()
