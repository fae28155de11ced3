"""Where a build's two parallel stages run: on Ray Data (local Ray or a cluster; the default), or
in this process (for debugging, and as the benchmark's baseline). Same stages, same files.

A stage is a class built from constructor args and then called on one work item at a time (a
one-row pyarrow table); it writes its output files itself and returns a small table that the
driver collects.
"""

from __future__ import annotations

import uuid
from typing import Protocol

import pyarrow as pa

from infra.storage import storage_env


class StageRunner(Protocol):
    def map_items(self, stage: type, args: tuple, items: list[dict]) -> pa.Table:
        """Call the stage on each work item, in parallel where it can; concatenate, in order, what
        it returns."""


class RayRunner:
    """Ray Data, streaming, as tasks: Ray keeps its idle worker processes, so a worker that built
    a stage once (imports, the toxicity model, the tokenizer) serves the next build at once,
    where an actor pool would start fresh processes for every execution. Output order is the
    input's (preserve_order), so shard names and contents do not depend on scheduling."""

    def __init__(self):
        import ray

        from infra.ray_runtime import ensure_ray

        ensure_ray()
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        # Each execution is a single map over items held by the driver, so nothing needs CPUs
        # kept in reserve; with the reservation on, 8 one-second tasks took 5.4 s on 2 CPUs
        # instead of 4.1 s.
        ctx.op_resource_reservation_enabled = False

    def map_items(self, stage: type, args: tuple, items: list[dict]) -> pa.Table:
        import ray

        ds = ray.data.from_items(items, override_num_blocks=len(items))
        return collect(ds.map_batches(call_stage, fn_args=(stage, args, uuid.uuid4().hex),
                                      batch_size=1, batch_format="pyarrow",
                                      runtime_env={"env_vars": storage_env()}))


_built_stage: dict[str, object] = {}  # per worker process: the stage of the current execution


def call_stage(batch: pa.Table, stage: type, args: tuple, execution: str) -> pa.Table:
    """Ray Data task body: build the stage once per worker process and execution, then call it."""
    run = _built_stage.get(execution)
    if run is None:
        _built_stage.clear()
        run = _built_stage[execution] = stage(*args)
    return run(batch)


def collect(ds) -> pa.Table:
    import ray

    return pa.concat_tables(ray.get(ds.to_arrow_refs()))


class InProcessRunner:
    """The same stages called in this process, one batch after another."""

    def map_items(self, stage: type, args: tuple, items: list[dict]) -> pa.Table:
        run = stage(*args)
        return pa.concat_tables([run(pa.Table.from_pylist([item])) for item in items])
