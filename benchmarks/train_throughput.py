"""Training throughput of the `small` preset: Ray Train (2 workers x 1 CPU, DDP over gloo)
against the same training loop in one plain process, and the plain loop's share of the matmul peak.

Set-up (not timed): a local Ray (`ensure_ray(Settings(home=tmp, ray_num_cpus=3))`, the embedded
default's cores + 1 logical CPUs) and a small text dataset built once into a temporary folder
with `build_dataset` (pydoc-topics + python-stdlib, preset small, tokenizer vocabulary 4096, rows
packed to 512 tokens).

What it measures, with the same global batch of 2B rows x 512 tokens per optimizer step:
  * ray   - `workers.train.trainer.train` with workers=2, cpus_per_worker=1, batch_size=B (fp32).
            Steady-state tokens/s: the median of the per-step `tokens_per_s` metric that the
            rank-0 worker logs to MLflow (all ranks' tokens / rank 0's `train_step` seconds),
            over the steps after the first `warmup` ones. The wall time of the whole `train()`
            call (Ray Train start-up, data streaming, every step, validation, final checkpoint,
            MLflow artifacts; no model registration) is reported for context. `train_worker` is
            wrapped (in this process only) to record torch's thread counts inside each worker and,
            after its loop, to time a gloo all_reduce of a gradient-sized buffer.
  * plain - one process, torch threads = the 2 cores, `workers.train.loop.train_step` on batches
            of 2B rows collated with `workers.train.data.collate` from the same train shards read
            with pyarrow; same model (same seed), optimizer (`make_optimizer`) and schedule; per
            step timed exactly like the worker times it (train_step only; collation outside).
            Its steps run half before and half after the Ray run, so that a busy spell of other
            work on the shared machine hits both paths alike; median over the steady steps.
The full run only (not --quick), where the time goes:
  * plain 1 thread, batch B: what one Ray worker computes per step, without Ray or DDP; twice its
            tokens/s is what 2 independent 1-thread workers could reach.
  * plain bf16: `train_step(..., autocast_dtype=torch.bfloat16)`, 2 threads, batch 2B.
  * without Ray: the workers' loop in 2 spawned processes x 1 torch thread (batch B each), once
            independent and once wrapped in DDP over gloo with find_unused_parameters=True (as
            `prepare_model` is called): separates the cost of DDP from the cost of Ray.
  * cores: during Ray's steady steps, CPU seconds of every process (/proc, every second) grouped
            into the workers' training threads, their other threads, Ray Data, other Ray actors,
            Ray daemons, this process, other visible processes, and work not visible here
            (/proc/stat's busy time minus all of that: other containers on the same cores).
  * optimizer: one AdamW step as `make_optimizer` builds it against foreach=True / fused=True,
            and clip_grad_norm_, timed interleaved.
  * profile: torch.profiler over one plain fp32 step: self CPU time by category (GEMM, attention
            kernel, MoE dispatch/routing, loss, optimizer, other).

  * dpo vs sft: in the plain process, a preference-stage (DPO) step over B pairs against an sft
            step over the same 2B rows, interleaved on twin models (the reference's forward is
            DPO's extra cost); both score each row's second half.

Figures:
  dpo_vs_sft              = DPO tokens/s / sft tokens/s (the same sequences through the policy)
  ray_vs_plain            = Ray steady tokens/s / plain tokens/s (target >= 0.95)
  cpu_util_of_matmul_peak = plain tokens/s x training_flops_per_token(cfg, 512) /
                            measure_matmul_peak(float32) (best of two measurements in this run;
                            target >= 0.4); bf16_util_of_matmul_peak likewise for bf16 autocast
                            against the bf16 peak (where the CPU has avx512_bf16 or AMX).

    python benchmarks/train_throughput.py          # B=4 (global 8 x 512), Ray 3+20 steps; ~4 min
                                                   # on a quiet machine, 7-10 min on a busy one
    python benchmarks/train_throughput.py --quick  # B=2 (global 4 x 512), Ray 2+8 steps: the
                                                   # same two figures, without the breakdown
                                                   # tables below (about a minute quiet)

How to read it on a shared machine: other work slows a 2-thread process (OpenMP barriers wait
for a descheduled thread, thousands of parallel regions per step) far more than two 1-thread
processes, so under contention `ray_vs_plain` rises well above 1 and the utilisation drops;
`*_fastest` figures and the "cores" table (work not visible here, other processes) show it.
Compare figures only from runs whose load average stayed near 2.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from _common import available_cores, emit_json, machine_busy_cpu_seconds, machine_info, \
    measure_matmul_peak, parse_args, print_table, time_interleaved, use_all_cores

import numpy as np
import pyarrow.parquet as pq
import torch

from infra.settings import Settings
from infra.storage import join
from model.config import ModelConfig
from model.transformer import Transformer
from workers.data.manifest import dataset_root
from workers.train.config import TrainConfig, plan_stage
from workers.data.pack import PackedSequences
from workers.train.data import Batch, collate
from workers.train.flops import training_flops_per_token
from workers.train.loop import language_modeling, make_optimizer, train_step
from workers.train.preference import PairBatch, dpo_objective
from workers.train.worker import optim_config

TARGET_RAY_VS_PLAIN = 0.95
TARGET_UTIL = 0.4
SEQ_LEN = 512
RAY_CPUS = 3  # 2 training workers x 1 CPU + 1 for Ray Data's reading, as the embedded default

FULL = dict(batch=4, ray_warmup=3, ray_steady=20, plain_warmup=2, plain_steady=20, one_thread=4,
            bf16_steady=10, no_ray_warmup=3, no_ray_steps=8, stdlib_bytes=600_000)
QUICK = dict(batch=2, ray_warmup=2, ray_steady=8, plain_warmup=2, plain_steady=8,
             stdlib_bytes=50_000)  # the breakdown's sizes are FULL's alone


# ---------------------------------------------------------------------------------------------
# data


def build_corpus(root: Path, stdlib_bytes: int) -> tuple[str, float]:
    """A text-only dataset for the small preset, packed to SEQ_LEN; returns (manifest URI, s)."""
    from workers.data.build import build_dataset
    from workers.data.spec import parse_spec

    spec = parse_spec({
        "name": "train-throughput", "preset": "small", "seed": 0,
        "sources": [{"name": "python-docs", "modality": "text", "reader": "pydoc-topics"},
                    {"name": "python-stdlib", "modality": "text", "reader": "python-stdlib",
                     "options": {"max_bytes": stdlib_bytes}}],
        "tokenizer": {"vocab_size": 4096, "sample_bytes": 300_000},
        "splits": {"validation_percent": 5, "test_percent": 5},
        "packing": {"seq_len": SEQ_LEN, "rows_per_shard": 256},
    }, "train_throughput")
    started = time.perf_counter()
    result = build_dataset(spec, str(root / "dataset"), str(root / "cache"))
    return result.manifest_uri, time.perf_counter() - started


def read_train_rows(manifest: dict) -> dict[str, np.ndarray]:
    """The train split's packed rows, in shard order, as numpy columns (Ray Data's batch format)."""
    root = dataset_root(manifest)
    tables = [pq.read_table(join(root, s["path"])) for s in manifest["splits"]["train"]["shards"]]
    columns: dict[str, list] = defaultdict(list)
    for table in tables:
        for name in table.column_names:
            columns[name].append(table.column(name).to_numpy(zero_copy_only=False))
    return {name: np.concatenate(parts) for name, parts in columns.items()}


class Batches:
    """Consecutive batches of `size` rows, collated as the workers collate, wrapping around."""

    def __init__(self, rows: dict[str, np.ndarray], size: int):
        self.rows, self.size = rows, size
        self.n = len(next(iter(rows.values())))
        if self.n < size:
            raise SystemExit(f"the train split holds {self.n} rows, fewer than a batch of {size}")
        self.at = 0

    def next(self):
        if self.at + self.size > self.n:
            self.at = 0
        picked = {k: v[self.at:self.at + self.size] for k, v in self.rows.items()}
        self.at += self.size
        return collate(picked)


# ---------------------------------------------------------------------------------------------
# the plain process


class PlainLoop:
    """The worker's loop without Ray: same model init, optimizer, schedule and step timing."""

    def __init__(self, model_cfg: ModelConfig, cfg: TrainConfig, rows, batch: int,
                 autocast: torch.dtype | None = None):
        torch.manual_seed(cfg.seed)  # the workers' initial weights
        self.model = Transformer(model_cfg)
        self.optim = optim_config(cfg)
        self.optimizer = make_optimizer(self.model, self.optim)
        self.batches = Batches(rows, batch)
        self.autocast = autocast
        self.step = 0

    def run(self, steps: int) -> list[tuple[float, int]]:
        """(seconds, tokens) of each of `steps` optimizer steps."""
        out = []
        for _ in range(steps):
            batch = self.batches.next()
            started = time.perf_counter()
            result = train_step(self.model, self.optimizer, [batch], self.step, self.optim,
                                self.autocast)
            out.append((time.perf_counter() - started, result.tokens))
            self.step += 1
        return out


def dpo_and_sft_tokens_per_s(model_cfg: ModelConfig, cfg: TrainConfig, rows, pairs: int,
                             steps: int) -> tuple[float, float]:
    """Median tokens/s of a DPO step over `pairs` pairs (chosen and rejected: 2 x pairs
    sequences through the policy, and through a frozen reference without gradients) and of an
    sft step over the same 2 x pairs rows, interleaved step by step on twin models."""
    torch.manual_seed(cfg.seed)
    policy, sft_model = Transformer(model_cfg), Transformer(model_cfg)
    sft_model.load_state_dict(policy.state_dict())
    reference = Transformer(model_cfg).eval().requires_grad_(False)
    reference.load_state_dict(policy.state_dict())
    optim = optim_config(cfg)
    loops = {"dpo": (policy, make_optimizer(policy, optim), dpo_objective(reference, cfg.beta)),
             "sft": (sft_model, make_optimizer(sft_model, optim), language_modeling)}
    batches = Batches(rows, 2 * pairs)
    samples: dict[str, list[tuple[float, int]]] = {"dpo": [], "sft": []}
    for step in range(steps + 1):  # the first of each warms up
        batch = batches.next()
        rows_ = batch.rows
        half = torch.arange(pairs)
        # each row's second half is its "response": the loss mask DPO and sft both score
        mask = torch.zeros_like(rows_.tokens, dtype=torch.bool)
        mask[:, rows_.tokens.shape[1] // 2:] = True
        masked = PackedSequences(rows_.tokens, rows_.doc_ids, mask)
        inputs = {"dpo": PairBatch(masked.rows(half), masked.rows(half + pairs)),
                  "sft": Batch(masked, batch.media)}
        for name, (model, optimizer, objective) in loops.items():
            started = time.perf_counter()
            result = train_step(model, optimizer, [inputs[name]], step, optim, objective=objective)
            if step:
                samples[name].append((time.perf_counter() - started, result.tokens))
    return tokens_per_s(samples["dpo"]), tokens_per_s(samples["sft"])


def tokens_per_s(samples: list[tuple[float, int]]) -> float:
    return statistics.median(tokens / seconds for seconds, tokens in samples)


@dataclass(frozen=True)
class Headline:
    """The two paths' steady throughput, which the diagnostics compare everything with."""
    plain_tps: float
    ray_tps: float
    global_tokens: int  # tokens of one global step
    n_params: int

    @property
    def plain_step_s(self) -> float:
        return self.global_tokens / self.plain_tps

    @property
    def ray_step_s(self) -> float:
        return self.global_tokens / self.ray_tps


# ---------------------------------------------------------------------------------------------
# Ray Train


def probed(original, probe_dir: str, n_params: int):
    """`train_worker` plus a record of the worker's threads and, after its loop, the time of a
    gloo all_reduce of a gradient-sized fp32 buffer (what DDP exchanges per step)."""

    def worker(config: dict) -> None:
        import json as json_
        import os as os_
        import time as time_

        import ray.train
        import torch as torch_
        import torch.distributed as dist

        rank = ray.train.get_context().get_world_rank()
        info = {"rank": rank, "torch_threads": torch_.get_num_threads(),
                "interop_threads": torch_.get_num_interop_threads(),
                "OMP_NUM_THREADS": os_.environ.get("OMP_NUM_THREADS"),
                "affinity_cores": len(os_.sched_getaffinity(0)),
                "backend": dist.get_backend() if dist.is_initialized() else None}
        original(config)
        if dist.is_initialized():
            grads = torch_.zeros(n_params)
            small = torch_.zeros(8)
            for _ in range(2):
                dist.all_reduce(grads)
            times = []
            for _ in range(5):
                started = time_.perf_counter()
                dist.all_reduce(grads)
                times.append(time_.perf_counter() - started)
            latency = []
            for _ in range(20):
                started = time_.perf_counter()
                dist.all_reduce(small)
                latency.append(time_.perf_counter() - started)
            info["allreduce_grad_s"] = sorted(times)[len(times) // 2]
            info["allreduce_small_s"] = sorted(latency)[len(latency) // 2]
        with open(os_.path.join(probe_dir, f"rank-{rank}.json"), "w") as f:
            json_.dump(info, f)

    return worker


CPU_GROUPS = ("Ray Train workers: training thread", "Ray Train workers: other threads",
              "Ray Data streaming (SplitCoordinator, read tasks)", "other Ray actors and tasks",
              "Ray daemons (raylet, GCS, agents)", "driver (this process)",
              "other processes visible here", "other work not visible here (another container)")


class CpuSampler:
    """CPU seconds of every visible process (and of each Ray Train worker's threads), sampled from
    /proc every `every` s by a thread, with the machine's busy time from /proc/stat (which also
    counts work in other containers), to account for the cores during a window."""

    def __init__(self, every: float = 1.0):
        import threading

        self.every, self.me = every, os.getpid()
        self.tick = os.sysconf("SC_CLK_TCK")
        self.samples: list[tuple[float, dict[tuple, float], float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                self.samples.append(self._sample())
            except OSError:
                pass
            if self._stop.wait(self.every):
                self.samples.append(self._sample())
                return

    @staticmethod
    def _stat(path: str) -> tuple[str, int, int]:
        """(comm, ppid, utime + stime ticks) of /proc/<pid>[/task/<tid>]/stat."""
        with open(path) as f:
            text = f.read()
        comm = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        return comm, int(fields[1]), int(fields[11]) + int(fields[12])

    @staticmethod
    def _name(pid: int) -> str:
        """The command line, read every time: Ray re-titles a pooled worker process
        (ray::IDLE -> ray::RayTrainWorker, ray::ReadParquet..., ...)."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            return ""

    def _sample(self) -> tuple[float, dict[tuple, float], float]:
        """(time, {key: CPU seconds}, machine busy seconds); keys ("train", pid, tid),
        ("ray", title, pid), ("daemon", name, pid), ("driver", pid), ("visible", pid)."""
        when = time.time()
        procs: dict[int, tuple[int, int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    _, ppid, ticks = self._stat(f"/proc/{entry}/stat")
                except (OSError, ValueError):
                    continue
                procs[int(entry)] = (ppid, ticks)
        ours = {self.me}
        changed = True
        while changed:  # descendants of this process: its local Ray and everything Ray started
            changed = False
            for pid, (ppid, _) in procs.items():
                if ppid in ours and pid not in ours:
                    ours.add(pid)
                    changed = True
        seconds: dict[tuple, float] = {}
        for pid, (_, ticks) in procs.items():
            name = self._name(pid)
            if pid not in ours:
                seconds[("visible", pid)] = ticks / self.tick
            elif pid == self.me:
                seconds[("driver", pid)] = ticks / self.tick
            elif name.startswith("ray::RayTrainWorker"):
                try:
                    tids = os.listdir(f"/proc/{pid}/task")
                except OSError:
                    continue
                for tid in tids:
                    try:
                        _, _, thread_ticks = self._stat(f"/proc/{pid}/task/{tid}/stat")
                    except (OSError, ValueError):
                        continue
                    seconds[("train", pid, int(tid))] = thread_ticks / self.tick
            elif name.startswith("ray::") or "default_worker" in name:
                title = name.split()[0] if name.startswith("ray::") else "ray worker (starting)"
                seconds[("ray", title, pid)] = ticks / self.tick
            else:
                exe = next((Path(w).name for w in name.split() if w.endswith(".py")),
                           Path(name.split()[0]).name if name else "?")
                seconds[("daemon", exe, pid)] = ticks / self.tick
        return when, seconds, machine_busy_cpu_seconds()

    def between(self, start: float, end: float) -> dict:
        """Cores used per group (CPU-s / wall-s) between the samples nearest to start and end,
        plus the busiest Ray process titles ("ray_titles")."""
        if len(self.samples) < 2:
            return {}
        a = min(self.samples, key=lambda s: abs(s[0] - start))
        b = min(self.samples, key=lambda s: abs(s[0] - end))
        wall = b[0] - a[0]
        if wall <= 0:
            return {}
        # a key new in b started inside the window: all its time is in it
        delta = {k: max(0.0, v - a[1].get(k, 0.0)) for k, v in b[1].items()}
        groups = dict.fromkeys(CPU_GROUPS, 0.0)
        per_worker: dict[int, list[float]] = defaultdict(list)
        titles: dict[str, float] = defaultdict(float)
        for key, sec in delta.items():
            kind = key[0]
            if kind == "train":
                per_worker[key[1]].append(sec)
            elif kind == "ray":
                titles[key[1]] += sec
                data = any(w in key[1] for w in ("SplitCoordinator", "Read", "SplitBlocks"))
                groups[CPU_GROUPS[2 if data else 3]] += sec
            elif kind == "daemon":
                titles[key[1]] += sec
                groups[CPU_GROUPS[4]] += sec
            elif kind == "driver":
                groups[CPU_GROUPS[5]] += sec
            else:
                groups[CPU_GROUPS[6]] += sec
        for threads in per_worker.values():  # the busiest thread of a worker runs the model
            groups[CPU_GROUPS[0]] += max(threads)
            groups[CPU_GROUPS[1]] += sum(threads) - max(threads)
        busy = b[2] - a[2]
        groups[CPU_GROUPS[7]] = max(0.0, busy - sum(groups.values()))
        cores = {g: v / wall for g, v in groups.items()}
        cores["machine busy (all cores, /proc/stat)"] = busy / wall
        cores["window_s"] = wall
        cores["train_workers"] = len(per_worker)
        cores["ray_titles"] = {t: round(v / wall, 3) for t, v in
                               sorted(titles.items(), key=lambda kv: -kv[1])[:8]}
        return cores


def run_ray(cfg: TrainConfig, settings: Settings, probe_dir: Path, n_params: int,
            warmup: int) -> dict:
    import mlflow

    import workers.train.trainer as trainer

    original = trainer.train_worker
    trainer.train_worker = probed(original, str(probe_dir), n_params)
    try:
        with CpuSampler() as sampler:
            started = time.perf_counter()
            result = trainer.train(cfg, settings)
            wall = time.perf_counter() - started
    finally:
        trainer.train_worker = original
    client = mlflow.MlflowClient(settings.tracking_uri)
    history = sorted(client.get_metric_history(result.run_id, "tokens_per_s"), key=lambda m: m.step)
    utilisation = sorted(client.get_metric_history(result.run_id, "utilisation"),
                         key=lambda m: m.step)
    probes = [json.loads(p.read_text()) for p in sorted(probe_dir.glob("rank-*.json"))]
    # the steady steps' window: from the end of the last warm-up step to the end of the last one
    cpu = {}
    if len(history) > warmup:
        cpu = sampler.between(history[warmup - 1].timestamp / 1e3 if warmup else
                              history[0].timestamp / 1e3, history[-1].timestamp / 1e3)
    return {"wall_s": wall, "per_step": [m.value for m in history],
            "utilisation": [m.value for m in utilisation], "probes": probes, "cpu_cores": cpu}


# ---------------------------------------------------------------------------------------------
# the workers' loop without Ray: 2 spawned processes x 1 thread, with and without DDP


DDP_MODES = ("independent (no DDP)", "DDP gloo, find_unused_parameters=True (as prepare_model)")


def _ddp_child(rank: int, mode: str, port: int, manifest: dict, model_cfg: dict, cfg: dict,
               batch: int, warmup: int, steps: int, queue) -> None:
    try:
        queue.put((rank, _ddp_steps(rank, mode, port, manifest, model_cfg, cfg, batch, warmup,
                                    steps)))
    except BaseException as e:  # the parent waits on the queue: never leave it waiting
        queue.put((rank, f"{type(e).__name__}: {e}"))
        raise


def _ddp_steps(rank: int, mode: str, port: int, manifest: dict, model_cfg: dict, cfg: dict,
               batch: int, warmup: int, steps: int) -> list[float]:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)  # what Ray's OMP_NUM_THREADS=1 gives each 1-CPU worker
    train_cfg = TrainConfig.model_validate(cfg)
    rows = read_train_rows(manifest)
    loop = PlainLoop(ModelConfig.from_dict(model_cfg), train_cfg, rows, 2 * batch)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    model = loop.model
    if mode != DDP_MODES[0]:
        model = DistributedDataParallel(model, find_unused_parameters=True)
    times = []
    for i in range(warmup + steps):
        columns = loop.batches.rows
        start = (i * 2 + rank) * batch % (len(columns["tokens"]) - batch)
        micro = collate({k: v[start:start + batch] for k, v in columns.items()})
        dist.barrier()  # both ranks start the step together, as the worker's all_reduce makes them
        started = time.perf_counter()
        train_step(model, loop.optimizer, [micro], i, loop.optim)
        times.append(time.perf_counter() - started)
    dist.barrier()
    dist.destroy_process_group()
    return times[warmup:]


def run_without_ray(manifest: dict, model_cfg: ModelConfig, cfg: TrainConfig, batch: int,
                    warmup: int, steps: int) -> dict[str, float]:
    """Median step seconds (the slower rank's median) of each mode in DDP_MODES."""
    import socket

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = {}
    for mode in DDP_MODES:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        queue = ctx.Queue()
        args = (mode, port, manifest, model_cfg.to_dict(), cfg.model_dump(), batch, warmup, steps,
                queue)
        procs = [ctx.Process(target=_ddp_child, args=(rank, *args)) for rank in range(2)]
        for proc in procs:
            proc.start()
        results = [queue.get(timeout=900) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
        failed = [r for r in results if isinstance(r[1], str)]
        if failed:
            raise RuntimeError(f"{mode}: rank {failed[0][0]} failed: {failed[0][1]}")
        out[mode] = max(statistics.median(times) for _, times in results)
    return out


# ---------------------------------------------------------------------------------------------
# profile of one plain step

CATEGORIES = ("GEMM (linear, experts, LM head)", "attention kernel (SDPA)", "MoE dispatch + router",
              "loss (log_softmax, nll)", "optimizer (AdamW + grad clip)",
              "dtype casts and copies (aten::copy_, _to_copy)", "other (elementwise, norms, RoPE, "
              "masks, autograd)")
CASTS = ("aten::copy_", "aten::_to_copy", "aten::to", "aten::clone")
GEMM = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_grouped_mm",
        "aten::_weight_int8pack_mm", "mkldnn")
ATTENTION = ("scaled_dot_product", "flash_attention", "_efficient_attention")
DISPATCH = ("aten::argsort", "aten::sort", "aten::index", "aten::index_add", "aten::index_select",
            "aten::bincount", "aten::topk", "aten::cumsum", "aten::gather", "aten::scatter",
            "aten::index_put", "aten::_index_put_impl_", "aten::nonzero", "aten::zeros_like",
            "aten::embedding_dense_backward", "aten::_softmax", "aten::logsumexp")
LOSS = ("log_softmax", "nll_loss", "cross_entropy")


def category(event) -> str:
    names = []
    node = event
    while node is not None:
        names.append(node.name)
        node = node.cpu_parent
    if any(n.startswith("Optimizer.step") or "clip_grad" in n or "foreach_norm" in n
           or n.startswith("aten::_foreach") for n in names):
        return CATEGORIES[4]
    if any(any(a in n for a in ATTENTION) for n in names):
        return CATEGORIES[1]
    if any(g in event.name for g in GEMM):
        return CATEGORIES[0]
    if any(n.startswith(LOSS) or any(s in n for s in LOSS) for n in names):
        return CATEGORIES[3]
    if any(event.name.startswith(d) for d in DISPATCH):
        return CATEGORIES[2]
    if event.name in CASTS:
        return CATEGORIES[5]
    return CATEGORIES[6]


def profile_step(loop: PlainLoop) -> dict:
    from torch.profiler import ProfilerActivity, profile

    loop.run(1)  # warm
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loop.run(1)
    wall = time.perf_counter() - started
    shares: dict[str, float] = dict.fromkeys(CATEGORIES, 0.0)
    top: dict[str, float] = defaultdict(float)
    for event in prof.events():
        self_us = event.self_cpu_time_total
        if self_us <= 0:
            continue
        shares[category(event)] += self_us
        top[event.name] += self_us
    total = sum(shares.values())
    return {"wall_s": wall, "self_cpu_s": total / 1e6,
            "shares": {k: v / total for k, v in shares.items()},
            "top_ops": sorted(((k, v / total) for k, v in top.items()), key=lambda kv: -kv[1])[:12]}


def optimizer_variants(model_cfg: ModelConfig, cfg: TrainConfig, repeats: int) -> dict[str, float]:
    """Seconds of one AdamW step over the model's parameters (random gradients): as
    `make_optimizer` builds it (fused=False, foreach left to torch: the per-tensor loop on CPU),
    against foreach=True and fused=True with the same groups and hyper-parameters."""
    torch.manual_seed(0)
    model = Transformer(model_cfg)
    for prm in model.parameters():
        prm.grad = torch.randn_like(prm) * 1e-3
    base = make_optimizer(model, optim_config(cfg))
    groups = [{k: v for k, v in g.items() if k in ("params", "weight_decay")}
              for g in base.param_groups]
    hyper = {"lr": base.defaults["lr"], "betas": base.defaults["betas"]}
    variants = {"make_optimizer (fused=False, per-tensor loop)": base,
                "foreach=True": torch.optim.AdamW(groups, foreach=True, **hyper),
                "fused=True": torch.optim.AdamW(groups, fused=True, **hyper)}
    fns = {name: opt.step for name, opt in variants.items()}
    fns["clip_grad_norm_"] = lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    return time_interleaved(fns, warmup=1, repeats=repeats)


# ---------------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0])
    p = QUICK if args.quick else FULL
    threads = use_all_cores()
    load_start = os.getloadavg()[0]
    started_all = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="longmix-train-throughput-"))
    try:
        figures = run(args, p, threads, tmp)
    finally:
        import ray
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    figures["load_average_1min_start"] = round(load_start, 2)
    figures["load_average_1min"] = machine_info()["load_average_1min"]
    figures["total_s"] = round(time.perf_counter() - started_all, 1)
    emit_json(figures)


def run(args, p: dict, threads: int, tmp: Path) -> dict:
    import ray

    from infra.ray_runtime import ensure_ray

    settings = Settings(home=tmp / "home", ray_num_cpus=RAY_CPUS)
    t0 = time.perf_counter()
    ensure_ray(settings)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray_start_s = time.perf_counter() - t0
    manifest_uri, build_s = build_corpus(tmp, p["stdlib_bytes"])

    B = p["batch"]
    ray_steps = p["ray_warmup"] + p["ray_steady"]
    cfg = TrainConfig(dataset=manifest_uri, steps=ray_steps, batch_size=B, workers=2,
                      cpus_per_worker=1, eval_every=ray_steps, eval_batches=1,
                      checkpoint_every=ray_steps, keep_checkpoints=1, max_failures=0,
                      registered_model=None, run_name="train-throughput")
    plan = plan_stage(cfg)
    model_cfg = ModelConfig.from_dict(plan.model)
    flops_per_token = training_flops_per_token(model_cfg, plan.seq_len)
    rows = read_train_rows(plan.manifest)

    peak_before = measure_matmul_peak(torch.float32)

    # plain fp32, first half (after its warm-up)
    plain = PlainLoop(model_cfg, cfg, rows, 2 * B)
    n_params = sum(prm.numel() for prm in plain.model.parameters())
    plain.run(p["plain_warmup"])
    first_half = p["plain_steady"] // 2
    plain_samples = plain.run(first_half)

    # Ray Train
    probe_dir = tmp / "probes"
    probe_dir.mkdir()
    ray_run = run_ray(cfg, settings, probe_dir, n_params, p["ray_warmup"])
    ray.shutdown()  # nothing of Ray runs beside the rest (an idle local Ray still polls)

    # plain fp32, second half
    plain.run(1)  # re-warm the caches after the Ray run
    plain_samples += plain.run(p["plain_steady"] - first_half)

    dpo_tps, sft_tps = dpo_and_sft_tokens_per_s(model_cfg, cfg, rows, B, p["plain_steady"])

    peak_after = measure_matmul_peak(torch.float32)
    peak = max(peak_before, peak_after)

    steady = ray_run["per_step"][p["ray_warmup"]:]
    global_tokens = 2 * B * SEQ_LEN
    head = Headline(tokens_per_s(plain_samples),
                    statistics.median(steady) if steady else float("nan"), global_tokens, n_params)
    plain_tps, ray_tps, ray_step_s, plain_step_s = (head.plain_tps, head.ray_tps, head.ray_step_s,
                                                    head.plain_step_s)
    plain_fastest = max(t / s for s, t in plain_samples)
    ray_fastest = max(steady) if steady else float("nan")
    ray_e2e_tps = ray_steps * global_tokens / ray_run["wall_s"]
    util = plain_tps * flops_per_token / peak
    worker_threads = sorted({pr["torch_threads"] for pr in ray_run["probes"]})

    print_table(
        f"Training throughput, small preset, seq {SEQ_LEN}, global batch {2 * B} rows "
        f"({global_tokens} tokens/step), fp32",
        ["path", "torch threads", "steady steps", "step s (median)", "tokens/s (median)",
         "tokens/s (fastest)", "vs plain"],
        [["Ray Train, 2 workers x 1 CPU, DDP gloo, B=%d each" % B,
          "/".join(map(str, worker_threads)) + " per worker", len(steady), f"{ray_step_s:.2f}",
          f"{ray_tps:.0f}", f"{ray_fastest:.0f}", f"{ray_tps / plain_tps:.3f}"],
         ["plain process, batch %d" % (2 * B), threads, len(plain_samples), f"{plain_step_s:.2f}",
          f"{plain_tps:.0f}", f"{plain_fastest:.0f}", "1.000"]],
        caption=f"Ray end-to-end: train() took {ray_run['wall_s']:.1f} s for {ray_steps} steps "
                f"({ray_e2e_tps:.0f} tokens/s over the whole call, {ray_e2e_tps / plain_tps:.2f} "
                f"of plain steady); Ray start {ray_start_s:.1f} s and dataset build "
                f"{build_s:.1f} s "
                f"not included. Steady = after {p['ray_warmup']} (Ray) / {p['plain_warmup']} "
                f"(plain) warm-up steps.")

    print_table(
        "Utilisation of the measured matmul peak (plain process, 2 threads)",
        ["precision", "tokens/s", "training GFLOP/s", "matmul peak GFLOP/s", "utilisation",
         "target"],
        [["fp32", f"{plain_tps:.0f}", f"{plain_tps * flops_per_token / 1e9:.1f}",
          f"{peak / 1e9:.1f}", f"{util:.3f}", TARGET_UTIL]],
        caption=f"training_flops_per_token(small, {SEQ_LEN}) = {flops_per_token / 1e6:.2f} MFLOP. "
                f"Peak: fastest 2048^3 matmul, best of before ({peak_before / 1e9:.1f}) and after "
                f"({peak_after / 1e9:.1f}) the runs.")

    print_table(
        "The preference stage (DPO) against sft, plain process, 2 threads, fp32",
        ["stage", "sequences / step", "tokens/s (median)", "vs sft"],
        [["sft: next-token loss", 2 * B, f"{sft_tps:.0f}", "1.000"],
         ["preference: DPO, %d pairs, frozen reference" % B, 2 * B, f"{dpo_tps:.0f}",
          f"{dpo_tps / sft_tps:.3f}"]],
        caption="Same model and rows; the DPO step adds the reference's forward (no backward) "
                f"over the same sequences. Interleaved, {p['plain_steady']} steps each.")

    figures = {
        "dpo_vs_sft": round(dpo_tps / sft_tps, 3),
        "dpo_tokens_per_s": round(dpo_tps, 1),
        "sft_tokens_per_s": round(sft_tps, 1),
        "ray_vs_plain": round(ray_tps / plain_tps, 3),
        "target_ray_vs_plain": TARGET_RAY_VS_PLAIN,
        "cpu_util_of_matmul_peak": round(util, 3),
        "target_cpu_util_of_matmul_peak": TARGET_UTIL,
        "meets_targets": bool(ray_tps / plain_tps >= TARGET_RAY_VS_PLAIN and util >= TARGET_UTIL),
        "ray_vs_plain_fastest": round(ray_fastest / plain_fastest, 3),
        "ray_tokens_per_s": round(ray_tps, 1),
        "ray_tokens_per_s_fastest": round(ray_fastest, 1),
        "ray_steady_steps": len(steady),
        "ray_per_step_tokens_per_s": [round(v, 1) for v in ray_run["per_step"]],
        "ray_train_wall_s": round(ray_run["wall_s"], 1),
        "ray_e2e_tokens_per_s": round(ray_e2e_tps, 1),
        "ray_logged_utilisation_median": round(statistics.median(
            ray_run["utilisation"][p["ray_warmup"]:]), 3) if ray_run["utilisation"] else None,
        "plain_tokens_per_s": round(plain_tps, 1),
        "plain_tokens_per_s_fastest": round(plain_fastest, 1),
        "plain_steady_steps": len(plain_samples),
        "training_flops_per_token": flops_per_token,
        "fp32_peak_gflops": round(peak / 1e9, 2),
        "plain_training_gflops": round(plain_tps * flops_per_token / 1e9, 2),
        "worker_torch_threads": worker_threads,
        "ray_step_s": round(ray_step_s, 3),
        "plain_step_s": round(plain_step_s, 3),
        "n_params": n_params,
        "batch_per_worker": B,
        "global_batch_rows": 2 * B,
        "seq_len": SEQ_LEN,
        "train_rows": len(rows["tokens"]),
        "ray_start_s": round(ray_start_s, 1),
        "dataset_build_s": round(build_s, 1),
        "torch_threads": threads,
        "cpu_model": machine_info()["cpu_model"],
        "quick": args.quick,
    }
    if not args.quick:  # where the time goes: the full run's tables
        figures.update(diagnostics(p, plan, model_cfg, cfg, rows, plain, ray_run, threads,
                                   flops_per_token, head))
    return figures


def diagnostics(p: dict, plan, model_cfg: ModelConfig, cfg: TrainConfig, rows: dict, plain,
                ray_run: dict, threads: int, flops_per_token: float, head: Headline) -> dict:
    """The full run's breakdown: one worker's share without Ray, the workers' loop without Ray
    (with and without DDP), bf16 autocast, a profiled step, the AdamW variants, the cores used
    during Ray's steady steps and the workers' own probes."""
    B, global_tokens, n_params = p["batch"], head.global_tokens, head.n_params
    plain_tps, ray_tps, plain_step_s, ray_step_s = (head.plain_tps, head.ray_tps,
                                                    head.plain_step_s, head.ray_step_s)

    # one Ray worker's share without Ray: batch B, 1 thread
    torch.set_num_threads(1)
    one = PlainLoop(model_cfg, cfg, rows, B)
    one.run(1)
    one_samples = one.run(p["one_thread"])
    torch.set_num_threads(threads)
    del one
    one_tps = tokens_per_s(one_samples)
    one_step_s = B * SEQ_LEN / one_tps

    # the workers' loop without Ray (2 processes x 1 thread), with and without DDP
    no_ray = run_without_ray(plan.manifest, model_cfg, cfg, B, p["no_ray_warmup"],
                             p["no_ray_steps"])

    # plain bf16 autocast, against the bf16 matmul peak
    bf16_samples, bf16_peak, prof_bf16 = None, None, None
    flags = machine_info()["cpu_flags"]
    if flags.get("avx512_bf16") or flags.get("amx_bf16"):
        bf16_peak = measure_matmul_peak(torch.bfloat16)
        bf16 = PlainLoop(model_cfg, cfg, rows, 2 * B, autocast=torch.bfloat16)
        bf16.run(p["plain_warmup"])
        bf16_samples = bf16.run(p["bf16_steady"])
        prof_bf16 = profile_step(bf16)
        del bf16
        bf16_peak = max(bf16_peak, measure_matmul_peak(torch.bfloat16))
    bf16_tps = tokens_per_s(bf16_samples) if bf16_samples else None
    bf16_util = bf16_tps * flops_per_token / bf16_peak if bf16_tps else None

    prof = profile_step(plain)
    optim_times = optimizer_variants(model_cfg, cfg, repeats=5)
    probes = ray_run["probes"]
    allreduce_s = max((pr.get("allreduce_grad_s", 0.0) for pr in probes), default=float("nan"))
    allreduce_small_s = max((pr.get("allreduce_small_s", 0.0) for pr in probes),
                            default=float("nan"))

    print_table(
        f"Other paths, same global batch of {2 * B} rows",
        ["path", "torch threads", "steady steps", "step s (median)", "tokens/s (median)",
         "tokens/s (fastest)", "vs plain"],
        [["plain process, batch %d (one worker's share)" % B, 1, len(one_samples),
          f"{one_step_s:.2f}", f"{one_tps:.0f}", f"{max(t / s for s, t in one_samples):.0f}",
          f"{one_tps / plain_tps:.3f}"],
         ["  x2 (two independent 1-thread workers, no DDP)", "1+1", "", "",
          f"{2 * one_tps:.0f}", "", f"{2 * one_tps / plain_tps:.3f}"]]
        + ([["plain process, bf16 autocast, batch %d" % (2 * B), threads, len(bf16_samples),
             f"{global_tokens / bf16_tps:.2f}", f"{bf16_tps:.0f}",
             f"{max(t / s for s, t in bf16_samples):.0f}", f"{bf16_tps / plain_tps:.3f}"]]
           if bf16_samples else []),
        caption=(f"bf16 autocast: {bf16_util:.3f} of the bf16 matmul peak "
                 f"({bf16_peak / 1e9:.1f} GFLOP/s)" if bf16_tps
                 else "bf16 autocast: not measured (the CPU has neither avx512_bf16 nor AMX)"))

    profiles = {"fp32": prof, **({"bf16 autocast": prof_bf16} if prof_bf16 else {})}
    print_table(
        f"Where one plain step's CPU time goes (torch.profiler, self CPU time, batch {2 * B}, "
        f"{threads} threads)",
        ["category", *(f"{k} share" for k in profiles), *(f"{k} s" for k in profiles)],
        [[c, *(f"{100 * pr['shares'][c]:.1f}%" for pr in profiles.values()),
          *(f"{pr['shares'][c] * pr['wall_s']:.3f}" for pr in profiles.values())]
         for c in CATEGORIES],
        caption="profiled step (after one warm step): "
                + "; ".join(f"{k} {pr['wall_s']:.2f} s wall, top ops "
                            + ", ".join(f"{n} {100 * v:.0f}%" for n, v in pr["top_ops"][:5])
                            for k, pr in profiles.items())
                + ". s = share x the profiled step's wall time (profiler overhead included).")

    print_table(
        f"The workers' loop without Ray: 2 spawned processes x 1 torch thread, batch {B} each "
        f"(global {2 * B}), {p['no_ray_steps']} steps after {p['no_ray_warmup']} warm-up",
        ["mode", "step s (median, slower rank)", "tokens/s", "vs plain", "vs independent"],
        [[mode, f"{t:.3f}", f"{global_tokens / t:.0f}", f"{plain_step_s / t:.3f}",
          f"{no_ray[DDP_MODES[0]] / t:.3f}"] for mode, t in no_ray.items()]
        + [["Ray Train (above)", f"{ray_step_s:.3f}", f"{ray_tps:.0f}",
            f"{ray_tps / plain_tps:.3f}", f"{no_ray[DDP_MODES[0]] / ray_step_s:.3f}"]],
        caption="Same train_step, model, optimizer and batches as the Ray workers; each step "
                "starts on a barrier. The DDP row differs from the independent row only by DDP "
                "(bucketed gloo all_reduce, unused-parameter search); Ray Train differs from "
                "the DDP row by Ray (streamed data, MLflow logging, actors).")

    cpu = ray_run["cpu_cores"]
    if cpu:
        print_table(
            f"Who used the {available_cores()} cores during Ray's steady steps (CPU-s per wall-s, "
            f"sampled from /proc every second)",
            ["process group", "cores", "CPU-s per step"],
            [[g, f"{v:.2f}", f"{v * ray_step_s:.2f}"] for g, v in cpu.items()
             if g not in ("window_s", "train_workers", "ray_titles")],
            caption=f"window: {cpu['window_s']:.1f} s (the steady steps' MLflow timestamps), "
                    f"{cpu['train_workers']} Ray Train worker processes. A worker's busiest thread "
                    "runs the model; its other threads are gloo's, Ray's core worker's and (rank "
                    "0) the MLflow logger's. Each worker needs "
                    f"{one_step_s:.2f} CPU-s of model compute per step (the 1-thread plain step). "
                    "Busiest Ray processes (cores): "
                    + ", ".join(f"{t} {v:.2f}" for t, v in cpu["ray_titles"].items()))

    base_optim = optim_times["make_optimizer (fused=False, per-tensor loop)"]
    print_table(
        f"AdamW step over the {n_params / 1e6:.2f} M parameters, 2 threads (median of interleaved "
        f"repeats)", ["variant", "ms", "vs make_optimizer", "share of a plain step"],
        [[name, f"{1e3 * t:.1f}", f"{t / base_optim:.2f}", f"{100 * t / plain_step_s:.1f}%"]
         for name, t in optim_times.items()])

    print_table(
        "Ray workers (recorded inside train_worker by a wrapper in this process)",
        ["rank", "torch threads", "interop threads", "OMP_NUM_THREADS", "cores in affinity",
         "backend", "all_reduce of grads (ms)", "all_reduce 8 floats (ms)"],
        [[pr["rank"], pr["torch_threads"], pr["interop_threads"], pr["OMP_NUM_THREADS"],
          pr["affinity_cores"], pr["backend"],
          f"{1e3 * pr.get('allreduce_grad_s', float('nan')):.1f}",
          f"{1e3 * pr.get('allreduce_small_s', float('nan')):.2f}"] for pr in probes],
        caption=f"gradient buffer: {n_params / 1e6:.2f} M fp32 parameters "
                f"({4 * n_params / 2 ** 20:.0f} MiB); all_reduce timed after training, 5 repeats, "
                f"median. Ray steady step {ray_step_s:.2f} s vs one 1-thread worker's compute "
                f"{one_step_s:.2f} s: {ray_step_s - one_step_s:+.2f} s per step of DDP, Ray and "
                f"contention overhead.")

    return {
        "bf16_util_of_matmul_peak": round(bf16_util, 3) if bf16_util is not None else None,
        "one_thread_batch_B_tokens_per_s": round(one_tps, 1),
        "two_independent_workers_vs_plain": round(2 * one_tps / plain_tps, 3),
        "ray_vs_two_independent_workers": round(ray_tps / (2 * one_tps), 3),
        "bf16_tokens_per_s": round(bf16_tps, 1) if bf16_tps else None,
        "bf16_vs_fp32": round(bf16_tps / plain_tps, 3) if bf16_tps else None,
        "bf16_peak_gflops": round(bf16_peak / 1e9, 2) if bf16_peak else None,
        "worker_probes": probes,
        "one_thread_batch_B_step_s": round(one_step_s, 3),
        "ray_overhead_over_one_worker_s": round(ray_step_s - one_step_s, 3),
        "no_ray_step_s": {k: round(v, 3) for k, v in no_ray.items()},
        "no_ray_ddp_vs_independent": round(no_ray[DDP_MODES[0]] / no_ray[DDP_MODES[1]], 3),
        "ray_vs_no_ray_ddp": round(no_ray[DDP_MODES[1]] / ray_step_s, 3),
        "ray_steady_cpu_cores": {k: (round(v, 3) if isinstance(v, float) else v)
                                 for k, v in cpu.items()},
        "allreduce_grads_ms": round(1e3 * allreduce_s, 1),
        "allreduce_small_ms": round(1e3 * allreduce_small_s, 2),
        "optimizer_step_ms": {k: round(1e3 * v, 1) for k, v in optim_times.items()},
        "profile_shares": {k: round(v, 3) for k, v in prof["shares"].items()},
        "profile_top_ops": [[k, round(v, 3)] for k, v in prof["top_ops"]],
        "profile_wall_s": round(prof["wall_s"], 3),
        "profile_bf16_shares": ({k: round(v, 3) for k, v in prof_bf16["shares"].items()}
                                if prof_bf16 else None),
        "profile_bf16_top_ops": ([[k, round(v, 3)] for k, v in prof_bf16["top_ops"]]
                                 if prof_bf16 else None),
        "profile_bf16_wall_s": round(prof_bf16["wall_s"], 3) if prof_bf16 else None,
    }


if __name__ == "__main__":
    main()
