"""Shared helpers for the scripts in benchmarks/ (not a benchmark itself).

Conventions every benchmark follows:
  * `python benchmarks/NAME.py` prints readable rich tables and, as its LAST stdout line, exactly
    one JSON object with the figures (`emit_json`); `--quick` gives the same figures on smaller
    sizes.
  * Timings are medians over several repeats after warm-up (`time_fn`, `time_interleaved`), and
    each script measures its own baseline in the same run and reports ratios, because the machines
    these run on are shared and noisy.
  * `measure_matmul_peak` is the machine's measured square-matmul throughput (fastest repeat), the
    reference for reporting utilisation as a fraction of what the hardware delivers to torch here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
# `python benchmarks/X.py` puts benchmarks/ on the path, not the repository root
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from workers.train.flops import matmul_times, measure_matmul_peak  # noqa: E402,F401  (re-exported)

# stdout stays machine-readable: no colour codes when piped, and wide enough that tables do not wrap
console = Console(width=None if sys.stdout.isatty() else 140, highlight=False)


# ---------------------------------------------------------------------------------------------
# arguments and threads


def parse_args(description: str | None,
               add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
               argv: Sequence[str] | None = None) -> argparse.Namespace:
    """--quick (same figures, smaller sizes, about a minute) plus whatever `add_arguments` adds."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="same figures on smaller sizes, within about a minute")
    if add_arguments is not None:
        add_arguments(parser)
    return parser.parse_args(argv)


def machine_busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot (every process, other containers'
    included), from /proc/stat: all but idle and iowait; guest time is already counted in user."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def use_all_cores() -> int:
    """Set torch's intra-op threads to every available core; returns the thread count."""
    torch.set_num_threads(available_cores())
    return torch.get_num_threads()


# ---------------------------------------------------------------------------------------------
# timing


def _time_once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_samples(fn: Callable[[], object], warmup: int = 2, repeats: int = 5) -> list[float]:
    """Wall-clock seconds of each of `repeats` calls of fn, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    return [_time_once(fn) for _ in range(max(1, repeats))]


def time_fn(fn: Callable[[], object], warmup: int = 2, repeats: int = 5) -> float:
    """Median wall-clock seconds of one call of fn (CPU: synchronous, nothing to synchronise)."""
    return statistics.median(time_samples(fn, warmup, repeats))


def time_interleaved_samples(fns: dict[str, Callable[[], object]], warmup: int = 1,
                             repeats: int = 5) -> dict[str, list[float]]:
    """Seconds of each call of each fn, timed round-robin (a, b, c, a, b, c, ...) so that a slow
    spell on a shared machine hits every variant alike and their ratios stay meaningful."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            samples[name].append(_time_once(fn))
    return samples


def time_interleaved(fns: dict[str, Callable[[], object]], warmup: int = 1,
                     repeats: int = 5) -> dict[str, float]:
    """Median seconds of each fn over `time_interleaved_samples`."""
    samples = time_interleaved_samples(fns, warmup, repeats)
    return {name: statistics.median(s) for name, s in samples.items()}


# ---------------------------------------------------------------------------------------------
# the machine


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where unavailable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


MATMUL_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                "amx_fp16")


def machine_info() -> dict:
    """What a benchmark's figures depend on: CPU, cores, torch threads and SIMD capability."""
    flags = cpu_flags()
    return {
        "cpu_model": cpu_model(),
        "cores_available": available_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": {f: f in flags for f in MATMUL_FLAGS},
        # other work on the machine (runnable processes, 1-minute average; > cores means contention)
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


# ---------------------------------------------------------------------------------------------
# output


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]],
                caption: str | None = None) -> None:
    """A rich table on stdout; cells are str()-ed, numeric columns right-aligned."""
    rows = [list(r) for r in rows]
    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for i, col in enumerate(columns):
        numeric = bool(rows) and all(_looks_numeric(r[i]) for r in rows)
        table.add_column(col, justify="right" if numeric else "left")
    for r in rows:
        table.add_row(*(str(c) for c in r))
    console.print(table)


def _looks_numeric(cell: object) -> bool:
    try:
        float(str(cell).rstrip("%x×").replace(",", ""))
        return True
    except ValueError:
        return False


def _jsonable(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    return value


def emit_json(figures: dict) -> None:
    """Print the figures as ONE JSON line: the benchmark's last line of stdout."""
    sys.stdout.flush()
    console.file.flush()
    print(json.dumps(_jsonable(figures), allow_nan=False, separators=(", ", ": ")), flush=True)
