"""The fixed cost of a Ray Train fit on this machine: `trainer.train` on the tiny preset for two
steps (so that start-up, not training, is what is timed), reading its shards with Ray Data's V2
parquet datasource (Ray's default; the baseline) and with V1 (what longmix uses), alternately on
one local Ray, after a warm-up fit of each.

Prints, per datasource, the median wall seconds of `train()` and the CPU seconds the whole
machine spent meanwhile (every Ray process: controller, workers, coordinators, readers), and the
ratios V1 / V2. The first fit on a fresh Ray (each `longmix run` process starts one) is reported
apart: that is where V2's footer-reader actor pool costs most.

Then what a flow's dataset step pays after a training step: the wall seconds of a small dataset
build (the tiny-sft spec) after a build and a fit, on a Ray that kills idle worker processes
after Ray's default 1 s (the baseline) and after the embedded default's IDLE_WORKER_KEEP_MS, and
their ratio.

    .venv/bin/python benchmarks/fit_startup.py [--quick] [--repeats N]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import ray
from _common import console, emit_json, machine_busy_cpu_seconds, machine_info, parse_args
from rich.table import Table

import infra.ray_runtime as ray_runtime
import workers.train.data as train_data
from infra.ray_runtime import ensure_ray
from infra.settings import Settings
from workers.data.build import build_dataset
from workers.data.spec import load_spec
from workers.train.config import parse_train_config
from workers.train.trainer import train

DATASOURCES = {"V2 (Ray's default)": True, "V1 (longmix)": False}


def timed_fit(manifest: str, home: Path, v2: bool) -> tuple[float, float]:
    train_data.PARQUET_DATASOURCE_V2 = v2  # read by split_dataset, in this (the driver's) process
    cfg = parse_train_config({"dataset": manifest, "steps": 2, "batch_size": 2, "workers": 2,
                              "checkpoint_every": 2, "eval_every": 2, "eval_batches": 1,
                              "registered_model": None})
    wall, cpu = time.perf_counter(), machine_busy_cpu_seconds()
    train(cfg, Settings(home=home / f"fit-{time.monotonic_ns()}"))
    return time.perf_counter() - wall, machine_busy_cpu_seconds() - cpu


IDLE_KEEP_MS = {"Ray's default (1 s)": 1_000,
                f"longmix ({ray_runtime.IDLE_WORKER_KEEP_MS // 1000} s)":
                    ray_runtime.IDLE_WORKER_KEEP_MS}


def build_tiny_sft(root: Path) -> float:
    out = root / f"sft-{time.monotonic_ns()}"
    wall = time.perf_counter()
    build_dataset(load_spec("tiny-sft"), str(out), str(out.with_name(out.name + "-cache")))
    return time.perf_counter() - wall


def build_after_fit(manifest: str, root: Path, keep_ms: int) -> float:
    """As a flow runs its steps: on a fresh Ray whose idle worker processes live `keep_ms` (read
    by ensure_ray when it starts Ray), a dataset build, a fit, then the wall seconds of the next
    build (tiny-sft, each into a folder of its own)."""
    ray.shutdown()
    ray_runtime.IDLE_WORKER_KEEP_MS = keep_ms
    ensure_ray(Settings(home=root / "home"))
    build_tiny_sft(root)
    timed_fit(manifest, root, v2=False)
    return build_tiny_sft(root)


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0], lambda p: p.add_argument(
        "--repeats", type=int, default=None, help="timed fits per datasource (default 3; 1 quick)"))
    repeats = args.repeats or (1 if args.quick else 3)
    root = Path(tempfile.mkdtemp(prefix="longmix-fit-startup-"))
    ensure_ray(Settings(home=root / "home"))
    manifest = build_dataset(load_spec("tiny"), str(root / "dataset"),
                             str(root / "cache")).manifest_uri

    first: dict[str, tuple[float, float]] = {}  # each datasource's fit on a fresh Ray
    for name, v2 in DATASOURCES.items():
        ray.shutdown()
        ensure_ray(Settings(home=root / "home"))
        first[name] = timed_fit(manifest, root, v2)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in DATASOURCES}
    for _ in range(repeats):
        for name, v2 in DATASOURCES.items():
            samples[name].append(timed_fit(manifest, root, v2))

    table = Table(title=f"Ray Train fit of 2 steps, tiny preset, 2 workers (later fits: median "
                        f"of {repeats})")
    for column in ("datasource", "first fit: wall s", "CPU s", "later fits: wall s", "CPU s"):
        table.add_column(column, justify="right" if column != "datasource" else "left")
    later = {name: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
             for name, runs in samples.items()}
    for name in DATASOURCES:
        table.add_row(name, *(f"{v:.1f}" for v in (*first[name], *later[name])))
    console.print(table)
    (v2, v1) = DATASOURCES
    ratios = {"first_fit_v1_vs_v2_wall": first[v1][0] / first[v2][0],
              "first_fit_v1_vs_v2_cpu": first[v1][1] / first[v2][1],
              "later_fit_v1_vs_v2_wall": later[v1][0] / later[v2][0],
              "later_fit_v1_vs_v2_cpu": later[v1][1] / later[v2][1]}
    console.print("V1 / V2: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))

    builds = {name: statistics.median(build_after_fit(manifest, root, keep)
                                      for _ in range(repeats))
              for name, keep in IDLE_KEEP_MS.items()}
    table = Table(title=f"tiny-sft dataset build right after a fit (median of {repeats})")
    table.add_column("idle worker processes live")
    table.add_column("build: wall s", justify="right")
    for name, seconds in builds.items():
        table.add_row(name, f"{seconds:.1f}")
    console.print(table)
    default, kept = builds.values()
    ratios["build_after_fit_kept_vs_default_wall"] = kept / default
    console.print(f"kept / default: {kept / default:.2f}")
    emit_json({**ratios, "build_after_fit": builds,
               "first_fit_v2": first[v2], "first_fit_v1": first[v1],
               "later_fit_v2": later[v2], "later_fit_v1": later[v1], "repeats": repeats,
               **machine_info()})


if __name__ == "__main__":
    main()
