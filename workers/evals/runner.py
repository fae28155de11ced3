"""Run a suite's evals against one model: each eval a Ray task (num_cpus=1) that opens the model
and the held-out data itself, all in parallel; or one after another in this process (`inline`),
which the benchmark and debugging use."""

from __future__ import annotations

import functools
import time

from workers.evals import long_context, media_needles, perplexity, safety
from workers.evals.adapters import CapabilityError
from workers.evals.config import SuiteConfig
from workers.evals.heldout import HeldOut, load_heldout
from workers.evals.models import ModelSpec, open_adapter
from workers.evals.results import EvalResult

EVAL_FUNCTIONS = {
    "perplexity": perplexity.perplexity, "niah_text": long_context.niah_text,
    "multi_needle": long_context.multi_needle, "niah_audio": media_needles.niah_audio,
    "niah_video": media_needles.niah_video, "refusal": safety.refusal,
    "over_refusal": safety.over_refusal, "toxicity": safety.toxicity,
    "injection": safety.injection, "pii": safety.pii,
}


@functools.lru_cache(maxsize=4)
def _heldout(manifest: str | None, split: str, max_sequences: int) -> HeldOut:
    return load_heldout(manifest, split, max_sequences)


def run_eval(spec: ModelSpec, name: str, cfg: SuiteConfig, manifest: str | None,
             split: str) -> EvalResult:
    """One eval, start to end. An eval the model cannot take (an endpoint without what it needs)
    comes back skipped with the reason; any other failure raises."""
    started = time.perf_counter()
    adapter = open_adapter(spec)
    data = _heldout(manifest, split, 4 * cfg.ppl_sequences)
    try:
        result = EVAL_FUNCTIONS[name](adapter, data, cfg)
    except CapabilityError as e:
        result = EvalResult(eval=name, skipped=str(e))
    result.seconds = time.perf_counter() - started
    return result


def run_evals(spec: ModelSpec, cfg: SuiteConfig, manifest: str | None = None,
              split: str = "test", executor: str = "ray") -> list[EvalResult]:
    if executor == "inline":
        return [run_eval(spec, name, cfg, manifest, split) for name in cfg.evals]
    if executor != "ray":
        raise ValueError(f"executor must be 'ray' or 'inline', got {executor!r}")
    import ray

    from infra.ray_runtime import ensure_ray

    ensure_ray()  # reuses a Ray already running in this process (the tests' session Ray)
    task = ray.remote(num_cpus=1, max_retries=0)(run_eval)
    return ray.get([task.remote(spec, name, cfg, manifest, split) for name in cfg.evals])
