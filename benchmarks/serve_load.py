"""Serving load: the Ray Serve endpoint (workers/serve) against in-process generation, and how its
continuous batching scales with concurrent clients.

What it measures, on a real checkpoint saved for the run (get_preset("small") freshly initialised,
seed 0, with a byte-level BPE tokenizer trained by Tokenizer.train on the pydoc topics), served by
`workers.serve.app.start_server` on a local Ray started by this script (127.0.0.1, a free port, one
replica with `serve_replica_cpus` CPUs = torch threads), called over HTTP with aiohttp:

  * single stream - one request at a time, greedy, `max_tokens` N, no stop strings: tokens/s of the
    whole request (completion tokens / wall time, prefill of the short prompt included) through
    the endpoint, non-streaming and streaming (SSE), against `model.generate.generate` on the same
    checkpoint in this process with the same thread count as the replica, the three timed
    round-robin so that a slow spell hits them alike. `serve_vs_inprocess` is the lower of the two
    ratios (target >= 0.9). A `max_tokens: 1` request gives the fixed cost of a request.
  * concurrency - C clients (1, 4, 16), each sending its requests one after another (streaming,
    the same N), the three levels interleaved over repeats: aggregate tokens/s (median over the
    repeats), per-request latency and time to first token (p50/p99 over every request).
    `concurrency16_vs_single` = aggregate tokens/s at 16 over that at 1 (target >= 8).
  * engine only - the same concurrency levels on `workers.serve.engine.Engine` in this process (no
    HTTP, no Ray): what batching alone gives, so the table shows how much HTTP and Serve take.

The model never sees EOS forced off (the API has no ignore_eos): the prompts are fixed and every
run checks that each request produced exactly N tokens (counts are reported).

    python benchmarks/serve_load.py           # N = 128, 7 single-stream repeats, 3 load repeats
    python benchmarks/serve_load.py --quick   # N = 48, fewer repeats (about a minute or two)
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import console, emit_json, machine_info, parse_args, print_table

import numpy as np
import torch

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import get_preset
from model.generate import SamplingParams, generate
from model.tokenizer import Tokenizer
from model.transformer import Transformer

TARGET_SERVE_VS_INPROCESS = 0.9
TARGET_CONCURRENCY16_VS_SINGLE = 8.0
CONCURRENCY = (1, 4, 16)

# fixed prompts: short (10-20 tokens), so a request is mostly decoding
PROMPTS = [
    "The for statement is used to iterate over the elements of a sequence",
    "A class definition defines a class object, which is a namespace",
    "Exceptions are a means of breaking out of the normal flow of control",
    "The import statement finds a module, loads and initializes it if necessary",
    "Names refer to objects. Names are introduced by name binding operations",
    "The while statement is used for repeated execution as long as an expression is true",
    "A function definition defines a user-defined function object",
    "Identifiers are unlimited in length. Case is significant",
    "The with statement is used to wrap the execution of a block",
    "Objects are Python's abstraction for data. All data in a Python program",
    "The try statement specifies exception handlers and cleanup code",
    "Comparisons yield boolean values: True or False",
    "A module is a file containing Python definitions and statements",
    "Lambda expressions are used to create anonymous functions",
    "String literals are described by the following lexical definitions",
    "The return statement leaves the current function call",
]


def add_arguments(parser) -> None:
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="tokens per request (default 128, --quick 48)")
    parser.add_argument("--max-batch-size", type=int, default=max(CONCURRENCY),
                        help="the replica's serve_max_batch_size (default 16, so that 16 clients "
                             "share each step; the setting's own default is 8)")


# ---------------------------------------------------------------------------------------------
# the checkpoint


def build_checkpoint(folder: Path) -> Path:
    from workers.data.sources import python_docs_corpus

    cfg = get_preset("small")
    tokenizer = Tokenizer.train(python_docs_corpus(), vocab_size=cfg.vocab_size)
    torch.manual_seed(0)
    save_checkpoint(folder, Transformer(cfg), tokenizer)
    return folder


# ---------------------------------------------------------------------------------------------
# where the CPU goes: this script's own Ray processes (children of this process), by role

ROLES = ("client", "replica", "proxy", "other Ray")


def cpu_snapshot() -> dict[str, float]:
    """CPU seconds (user + system) used so far by this process (the client: it only sends requests
    while the server is measured) and by the Ray processes it started, grouped by role."""
    import psutil

    me = psutil.Process()
    totals = dict.fromkeys(ROLES, 0.0)
    t = me.cpu_times()
    totals["client"] = t.user + t.system
    for child in me.children(recursive=True):
        try:
            title = " ".join(child.cmdline())
            t = child.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        role = ("replica" if "ServeReplica" in title else "proxy" if "ProxyActor" in title
                else "other Ray")
        totals[role] += t.user + t.system
    return totals


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {role: after[role] - before[role] for role in ROLES}


# ---------------------------------------------------------------------------------------------
# the HTTP client


class Client:
    def __init__(self, url: str, key: str, model: str, max_tokens: int):
        import aiohttp

        self.url, self.model, self.max_tokens = url, model, max_tokens
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64), timeout=aiohttp.ClientTimeout(total=600))

    def body(self, prompt: str, stream: bool, max_tokens: int | None = None) -> bytes:
        body = {"model": self.model, "prompt": prompt, "temperature": 0,
                "max_tokens": self.max_tokens if max_tokens is None else max_tokens}
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return json.dumps(body).encode()

    async def complete(self, prompt: str, max_tokens: int | None = None) -> dict:
        """Non-streaming: completion tokens and the request's wall time."""
        start = time.perf_counter()
        async with self.session.post(f"{self.url}/v1/completions",
                                     data=self.body(prompt, False, max_tokens),
                                     headers=self.headers) as response:
            reply = await response.json()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {reply}")
        seconds = time.perf_counter() - start
        return {"tokens": reply["usage"]["completion_tokens"], "seconds": seconds}

    async def stream(self, prompt: str) -> dict:
        """Streaming: completion tokens, wall time, times to the first and last text chunks."""
        start = time.perf_counter()
        first = last = None
        tokens = None
        async with self.session.post(f"{self.url}/v1/completions", data=self.body(prompt, True),
                                     headers=self.headers) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {await response.text()}")
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:].strip()
                if payload == b"[DONE]":
                    break
                event = json.loads(payload)
                if "error" in event:
                    raise RuntimeError(f"stream error: {event['error']}")
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                elif event["choices"] and event["choices"][0]["text"]:
                    now = time.perf_counter()
                    first = first if first is not None else now
                    last = now
        end = time.perf_counter()
        return {"tokens": tokens, "seconds": end - start, "ttft": (first or end) - start,
                "decode_seconds": (last or end) - (first or end)}

    async def close(self) -> None:
        await self.session.close()


async def closed_loop(fn, clients: int, per_client: int) -> tuple[float, list[dict]]:
    """`clients` concurrent clients, each running fn(prompt) `per_client` times one after another;
    returns the wall time of the whole round and every request's result."""
    results: list[dict] = []

    async def client(c: int) -> None:
        for r in range(per_client):
            results.append(await fn(PROMPTS[(c + r * clients) % len(PROMPTS)]))

    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    return time.perf_counter() - start, results


# ---------------------------------------------------------------------------------------------
# phases


async def single_stream(client: Client, model, tokenizer, n: int, repeats: int) -> dict:
    params = SamplingParams(max_new_tokens=n, temperature=0.0)

    async def inprocess(prompt: str) -> dict:
        start = time.perf_counter()
        g = generate(model, tokenizer, tokenizer.encode(prompt, bos=True), params)
        return {"tokens": len(g.token_ids), "seconds": time.perf_counter() - start}

    kinds = {"in-process generate": inprocess, "HTTP non-streaming": client.complete,
             "HTTP streaming": client.stream}
    for fn in kinds.values():  # warm-up
        await fn(PROMPTS[0])
    samples: dict[str, list[dict]] = {k: [] for k in kinds}
    cpu = {k: dict.fromkeys(ROLES, 0.0) for k in kinds}
    for r in range(repeats):
        prompt = PROMPTS[r % len(PROMPTS)]
        for name, fn in kinds.items():
            before = cpu_snapshot()
            samples[name].append(await fn(prompt))
            for role, seconds in cpu_delta(before, cpu_snapshot()).items():
                cpu[name][role] += seconds

    one = {"in-process generate": [], "HTTP non-streaming": []}
    for _ in range(repeats):  # the fixed cost of a request: max_tokens 1
        start = time.perf_counter()
        generate(model, tokenizer, tokenizer.encode(PROMPTS[0], bos=True),
                 SamplingParams(max_new_tokens=1))
        one["in-process generate"].append(time.perf_counter() - start)
        reply = await client.complete(PROMPTS[0], max_tokens=1)
        one["HTTP non-streaming"].append(reply["seconds"])

    out = {}
    for name, rows in samples.items():
        rates = [r["tokens"] / r["seconds"] for r in rows]
        out[name] = {"tokens_per_s": statistics.median(rates), "fastest_tokens_per_s": max(rates),
                     "token_counts": sorted({r["tokens"] for r in rows}),
                     "one_token_ms": statistics.median(one[name]) * 1e3 if name in one else None,
                     "cpu_ms_per_token": {role: 1e3 * v / sum(r["tokens"] for r in rows)
                                          for role, v in cpu[name].items()}}
        if name == "HTTP streaming":
            out[name]["decode_tokens_per_s"] = statistics.median(
                (r["tokens"] - 1) / r["decode_seconds"] for r in rows)
            out[name]["ttft_ms"] = statistics.median(r["ttft"] for r in rows) * 1e3
    return out


def summarise_load(walls: dict[int, list[float]], results: dict[int, list[list[dict]]],
                   cpu: dict[int, dict[str, float]] | None = None) -> dict:
    out = {}
    for c in walls:
        aggregate = [sum(r["tokens"] for r in rs) / w for w, rs in zip(walls[c], results[c])]
        pooled = [r for rs in results[c] for r in rs]
        latency = [r["seconds"] for r in pooled]
        ttft = [r["ttft"] for r in pooled if "ttft" in r]
        out[c] = {"aggregate_tokens_per_s": statistics.median(aggregate),
                  "aggregate_per_repeat": [round(a, 1) for a in aggregate],
                  "requests": len(pooled),
                  "token_counts": sorted({r["tokens"] for r in pooled}),
                  "latency_p50_s": float(np.percentile(latency, 50)),
                  "latency_p99_s": float(np.percentile(latency, 99)),
                  "ttft_p50_s": float(np.percentile(ttft, 50)) if ttft else None,
                  "ttft_p99_s": float(np.percentile(ttft, 99)) if ttft else None}
        if cpu is not None:
            tokens = sum(r["tokens"] for r in pooled)
            out[c]["cpu_ms_per_token"] = {role: 1e3 * v / tokens for role, v in cpu[c].items()}
    return out


async def http_load(client: Client, repeats: int, per_client: dict[int, int]) -> dict:
    walls: dict[int, list[float]] = {c: [] for c in CONCURRENCY}
    results: dict[int, list[list[dict]]] = {c: [] for c in CONCURRENCY}
    cpu = {c: dict.fromkeys(ROLES, 0.0) for c in CONCURRENCY}
    await closed_loop(client.stream, 4, 1)  # warm-up
    for _ in range(repeats):
        for c in CONCURRENCY:
            before = cpu_snapshot()
            wall, rs = await closed_loop(client.stream, c, per_client[c])
            for role, seconds in cpu_delta(before, cpu_snapshot()).items():
                cpu[c][role] += seconds
            walls[c].append(wall)
            results[c].append(rs)
    return summarise_load(walls, results, cpu)


async def engine_load(model, tokenizer, n: int, repeats: int, per_client: dict[int, int],
                      max_batch_size: int, max_batch_tokens: int) -> dict:
    from workers.serve.engine import BatchLimits, Engine
    from model.sequence import SequenceRequest

    engine = Engine(model, tokenizer, BatchLimits(max_batch_size, max_batch_tokens))

    async def one(prompt: str) -> dict:
        start, first = time.perf_counter(), None
        tokens = 0
        async for item in engine.stream(SequenceRequest(tokenizer.encode(prompt, bos=True),
                                                        SamplingParams(max_new_tokens=n))):
            if hasattr(item, "token_id"):
                tokens += 1
                first = first or time.perf_counter()
        return {"tokens": tokens, "seconds": time.perf_counter() - start,
                "ttft": first - start}

    walls: dict[int, list[float]] = {c: [] for c in CONCURRENCY}
    results: dict[int, list[list[dict]]] = {c: [] for c in CONCURRENCY}
    await closed_loop(one, 4, 1)
    for _ in range(repeats):
        for c in CONCURRENCY:
            wall, rs = await closed_loop(one, c, per_client[c])
            walls[c].append(wall)
            results[c].append(rs)
    return summarise_load(walls, results)


# ---------------------------------------------------------------------------------------------


async def run(args, folder: Path, home: Path) -> dict:
    from infra.settings import get_settings
    from workers.serve.app import start_server

    n = args.max_tokens or (48 if args.quick else 128)
    repeats_single = 4 if args.quick else 7
    repeats_load = 2 if args.quick else 3
    per_client = {1: 2, 4: 2, 16: 1} if args.quick else {1: 3, 4: 2, 16: 2}

    settings = get_settings().model_copy(update={
        "home": home, "serve_port": 0, "ray_address": None, "serve_api_keys": [],
        "serve_api_key_file": None, "serve_num_replicas": 1, "serve_autoscale_max_replicas": None,
        "ray_num_cpus": get_settings().ray_num_cpus or 3,
        "serve_max_batch_size": args.max_batch_size})
    threads = max(1, int(settings.serve_replica_cpus))
    torch.set_num_threads(threads)  # the in-process baseline computes like the replica

    model, tokenizer = load_checkpoint(folder)
    model.eval()
    for prompt in PROMPTS:  # the fixed prompts generate exactly n tokens (no EOS) in-process
        g = generate(model, tokenizer, tokenizer.encode(prompt, bos=True), SamplingParams(n))
        if len(g.token_ids) != n:
            raise SystemExit(f"prompt {prompt!r} stops after {len(g.token_ids)} of {n} tokens")
    prompt_lengths = [len(tokenizer.encode(p, bos=True)) for p in PROMPTS]

    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    info = start_server(str(folder), settings)
    startup_s = time.perf_counter() - start
    console.print(f"server {info.url} ({info.model}) ready in {startup_s:.1f} s; "
                  f"max_batch_size {settings.serve_max_batch_size}, "
                  f"replica CPUs {settings.serve_replica_cpus}")
    client = Client(info.url, info.generated_key, info.model, n)
    try:
        single = await single_stream(client, model, tokenizer, n, repeats_single)
        load = await http_load(client, repeats_load, per_client)
    finally:
        await client.close()
        from ray import serve
        serve.shutdown()
    engine = await engine_load(model, tokenizer, n, repeats_load, per_client,
                               settings.serve_max_batch_size, settings.serve_max_batch_tokens)
    return {"n": n, "threads": threads, "settings": settings, "single": single, "load": load,
            "engine": engine, "startup_s": startup_s, "prompt_lengths": prompt_lengths,
            "repeats_single": repeats_single, "repeats_load": repeats_load,
            "per_client": per_client, "load_average_at_start": load_start}


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0], add_arguments)
    info_start = machine_info()
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        folder = build_checkpoint(Path(tmp) / "small-bench")
        try:
            r = asyncio.run(run(args, folder, Path(tmp) / "home"))
        finally:
            import ray
            ray.shutdown()  # the local Ray this script started (never `ray stop`)
    info_end = machine_info()
    n, single, load, engine = r["n"], r["single"], r["load"], r["engine"]

    base = single["in-process generate"]["tokens_per_s"]
    ratios = {k: v["tokens_per_s"] / base for k, v in single.items()}
    print_table(
        f"Single stream, {n} tokens greedy, {r['threads']} torch thread(s) in the replica and "
        f"in-process, median of {r['repeats_single']} interleaved repeats",
        ["path", "tokens/s", "(fastest)", "vs in-process", "tokens", "max_tokens=1 ms",
         "decode-only tokens/s", "TTFT ms"],
        [[k, f"{v['tokens_per_s']:.1f}", f"{v['fastest_tokens_per_s']:.1f}",
          f"{ratios[k]:.3f}", "/".join(map(str, v["token_counts"])),
          f"{v['one_token_ms']:.1f}" if v["one_token_ms"] is not None else "",
          f"{v.get('decode_tokens_per_s', 0):.1f}" if "decode_tokens_per_s" in v else "",
          f"{v['ttft_ms']:.1f}" if "ttft_ms" in v else ""] for k, v in single.items()],
        caption=f"tokens/s = completion tokens / request wall time (prompts of "
                f"{min(r['prompt_lengths'])}-{max(r['prompt_lengths'])} tokens). "
                f"Target: serve/in-process >= {TARGET_SERVE_VS_INPROCESS}.")

    def load_rows(results: dict) -> list:
        one = results[1]["aggregate_tokens_per_s"]
        return [[c, v["requests"], "/".join(map(str, v["token_counts"])),
                 f"{v['aggregate_tokens_per_s']:.1f}", f"{v['aggregate_tokens_per_s'] / one:.2f}",
                 f"{v['latency_p50_s']:.2f}", f"{v['latency_p99_s']:.2f}",
                 f"{1e3 * v['ttft_p50_s']:.0f}", f"{1e3 * v['ttft_p99_s']:.0f}",
                 " ".join(map(str, v["aggregate_per_repeat"]))] for c, v in results.items()]

    columns = ["clients", "requests", "tokens", "aggregate tokens/s", "vs 1 client",
               "latency p50 s", "p99 s", "TTFT p50 ms", "p99 ms", "per repeat"]
    s = r["settings"]
    print_table(f"HTTP streaming load, {n} tokens per request, median over {r['repeats_load']} "
                f"interleaved repeats (max_batch_size {s.serve_max_batch_size})",
                columns, load_rows(load),
                caption=f"Target: 16 clients >= {TARGET_CONCURRENCY16_VS_SINGLE}x one client.")
    print_table("Engine only (in this process, no HTTP, no Ray), same load", columns,
                load_rows(engine))
    cpu_rows = [[f"single stream, {k}", *(f"{v['cpu_ms_per_token'][role]:.2f}" for role in ROLES),
                 f"{sum(v['cpu_ms_per_token'].values()):.2f}"] for k, v in single.items()]
    cpu_rows += [[f"{c} client(s), streaming", *(f"{v['cpu_ms_per_token'][role]:.2f}"
                                                for role in ROLES),
                  f"{sum(v['cpu_ms_per_token'].values()):.2f}"] for c, v in load.items()]
    print_table("CPU ms per generated token, by process (this script's own Ray processes)",
                ["phase", *ROLES, "total"], cpu_rows,
                caption=f"{info_start['cores_available']} cores; the replica's engine thread "
                        "and everything else on the machine share them.")

    serve_vs = min(ratios["HTTP non-streaming"], ratios["HTTP streaming"])
    conc = load[16]["aggregate_tokens_per_s"] / load[1]["aggregate_tokens_per_s"]
    engine_conc = engine[16]["aggregate_tokens_per_s"] / engine[1]["aggregate_tokens_per_s"]

    def rounded(d: dict) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}

    emit_json({
        "serve_vs_inprocess": round(serve_vs, 3),
        "target_serve_vs_inprocess": TARGET_SERVE_VS_INPROCESS,
        "serve_vs_inprocess_nonstreaming": round(ratios["HTTP non-streaming"], 3),
        "serve_vs_inprocess_streaming": round(ratios["HTTP streaming"], 3),
        "concurrency16_vs_single": round(conc, 3),
        "target_concurrency16_vs_single": TARGET_CONCURRENCY16_VS_SINGLE,
        "engine_concurrency16_vs_single": round(engine_conc, 3),
        "meets_targets": {"serve_vs_inprocess": serve_vs >= TARGET_SERVE_VS_INPROCESS,
                          "concurrency16_vs_single": conc >= TARGET_CONCURRENCY16_VS_SINGLE},
        "single_stream": {k: rounded(v) for k, v in single.items()},
        "http_load": {str(c): rounded(v) for c, v in load.items()},
        "engine_load": {str(c): rounded(v) for c, v in engine.items()},
        "max_tokens": n,
        "prompt_tokens": r["prompt_lengths"],
        "requests_per_client": r["per_client"],
        "max_batch_size": s.serve_max_batch_size,
        "replica_cpus": s.serve_replica_cpus,
        "torch_threads": r["threads"],
        "server_startup_s": round(r["startup_s"], 1),
        "cpu_model": info_start["cpu_model"],
        "cores_available": info_start["cores_available"],
        "load_average_1min_start": info_start["load_average_1min"],
        "load_average_1min_end": info_end["load_average_1min"],
        "quick": args.quick,
    })


if __name__ == "__main__":
    main()
