"""Connect to the configured Ray cluster, or start a local one sized for this machine."""

from __future__ import annotations

import os

from infra.settings import Settings, get_settings

# Train V2 polls worker health every 2 s by default, which stalls every report on small runs
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
# the embedded default's Ray listens on loopback for this process only; clusters set their own
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


# Ray kills a worker process idle for 1 s once more processes run than it has CPUs, which a
# training stage's actors always make true: each dataset build after a stage then started cold
# (tiny-sft: 6.4 s instead of 0.3 s; docs/benchmarks.md, "Fit start-up")
IDLE_WORKER_KEEP_MS = 300_000


def local_cpus() -> int:
    """Logical CPUs of the embedded Ray: the cores plus one, so that Ray Data's light reading of
    packed shards can run beside training workers that hold a CPU each (with exactly the core
    count, a 2-worker run on 2 cores leaves the data stream no CPU and waits forever)."""
    return (os.cpu_count() or 1) + 1


def ensure_ray(settings: Settings | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    settings = settings or get_settings()
    if settings.ray_address:
        ray.init(address=settings.ray_address, log_to_driver=False)
        return
    ray.init(num_cpus=settings.ray_num_cpus or local_cpus(), include_dashboard=False, log_to_driver=False,
             object_store_memory=settings.ray_object_store_mb * 1024 ** 2,
             runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}},
             _system_config={"idle_worker_killing_time_threshold_ms": IDLE_WORKER_KEEP_MS})
