"""Training telemetry for MLflow: a batching metrics logger for the rank-0 Ray Train worker, the
flat metric names of one training step, and the two training figures (expert load, loss curve).

The worker is not the process that created the run, so everything here goes through an explicit
`MlflowClient(tracking_uri)` and a run id: the fluent API's global state (active run, tracking
URI) belongs to the driver."""

from __future__ import annotations

import logging
import math
import posixpath
import re
import threading
import time
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display: figures go to files and MLflow
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402

log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
# MLflow's rule (mlflow.utils.validation): these characters, and a path that normpath keeps as is
_NAME = re.compile(r"^[/\w.\- :]+$")


def check_metric_name(name: str) -> str:
    """Raise ValueError for a name MLflow would refuse at flush time, far from its cause."""
    normal = posixpath.normpath(name)
    if not _NAME.match(name) or normal != name or normal.startswith(("/", "..")):
        raise ValueError(f"invalid MLflow metric name {name!r}: letters, digits and _ . - / : "
                         "forming a normalised relative path (no '//', '..', or edge '/')")
    return name


class MetricsLogger:
    """Per-step metrics into one MLflow run, written in batches off the training thread.

    A `log_batch` costs a round trip (an SQLite transaction through MLflow's ORM, or an HTTP
    request) and MLflow's store spends ~0.1 ms of Python per metric: per step, on the training
    loop's critical path, that stalls rank 0 and with it every rank at the next collective. So
    `log_step` only appends to a buffer; a background thread writes it every `flush_every_steps`
    steps or `flush_every_s` seconds, whichever comes first (`background=False` writes inline at
    those points instead). A failed background write only warns and keeps the metrics for the
    next one: a tracking-server outage must not kill training. `flush()` and `close()` write
    everything now and raise on failure. Call `close()` (or use `with`): the thread is a daemon,
    so metrics still buffered at exit without it are lost.
    """

    def __init__(self, tracking_uri: str, run_id: str, *, flush_every_steps: int = 50,
                 flush_every_s: float = 15.0, background: bool = True, max_pending: int = 200_000):
        from mlflow import MlflowClient

        if flush_every_steps < 1 or flush_every_s <= 0:
            raise ValueError("flush_every_steps must be >= 1 and flush_every_s > 0")
        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.flush_every_steps, self.flush_every_s = flush_every_steps, flush_every_s
        self.max_pending = max_pending
        self.write_seconds = 0.0  # time spent in log_batch, whichever thread did it
        self._pending: list = []
        self._steps_pending = 0
        self._last_flush = time.monotonic()
        self._checked: set[str] = set()
        self._closed = False
        self._lock = threading.Lock()  # guards _pending / _steps_pending
        self._write_lock = threading.RLock()  # one writer at a time: only writers pop the front
        self._wake = threading.Event()
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._run, name="mlflow-metrics", daemon=True)
            self._thread.start()

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        if self._closed:
            raise RuntimeError("MetricsLogger is closed")
        timestamp = int(time.time() * 1000)
        for key in metrics:
            if key not in self._checked:  # fail here, not in a batch written minutes later
                self._checked.add(check_metric_name(key))
        batch = [Metric(key, float(value), timestamp, int(step)) for key, value in metrics.items()]
        with self._lock:
            self._pending.extend(batch)
            self._steps_pending += 1
            due = (self._steps_pending >= self.flush_every_steps
                   or time.monotonic() - self._last_flush >= self.flush_every_s)
        if due and self._thread is not None:
            self._wake.set()
        elif due:
            self._write_quietly()

    def flush(self) -> None:
        """Write everything buffered so far; raise if MLflow refuses it (the metrics are kept)."""
        with self._write_lock:
            started = time.perf_counter()
            try:
                while True:
                    with self._lock:
                        chunk = self._pending[:MAX_METRICS_PER_BATCH]
                        if not chunk:
                            self._steps_pending = 0
                            self._last_flush = time.monotonic()
                            return
                    self.client.log_batch(self.run_id, metrics=chunk)
                    with self._lock:  # appends only go to the end, so the front is still chunk
                        del self._pending[:len(chunk)]  # a retry never writes a metric twice
            finally:
                self.write_seconds += time.perf_counter() - started

    def _write_quietly(self) -> None:
        with self._write_lock:  # re-entrant: dropping from the front must not race a writer
            try:
                self.flush()
            except Exception as e:  # noqa: BLE001 - any tracking failure: keep training
                with self._lock:
                    log.warning("MLflow metrics flush failed (%s); %d metrics kept for the next "
                                "try", e, len(self._pending))
                    if len(self._pending) > self.max_pending:  # bounded memory in an outage
                        dropped = len(self._pending) - self.max_pending
                        del self._pending[:dropped]
                        log.warning("dropped the %d oldest unflushed metrics", dropped)
                    # retry after another period, not on every step while the server is down
                    self._steps_pending, self._last_flush = 0, time.monotonic()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(timeout=self.flush_every_s)  # woken when due, or on the period
            self._wake.clear()
            if not self._closed and self._pending:
                self._write_quietly()

    def log_figure(self, figure, artifact_file: str) -> None:
        """A matplotlib figure as a run artifact (e.g. "training/expert_load.png"); closes it."""
        try:
            self.client.log_figure(self.run_id, figure, artifact_file)
        finally:
            plt.close(figure)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._wake.set()
            self._thread.join()
        self.flush()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def moe_layer_names(n_layers: int, n_dense_layers: int = 0) -> list[str]:
    """Names by transformer block index: with dense first layers, MoE layer 0 is block k."""
    return [f"layer{i}" for i in range(n_dense_layers, n_layers)]


def step_metrics(result, layer_names: Sequence[str] | None = None, *,
                 tokens_per_s: float | None = None,
                 utilisation: float | None = None) -> dict[str, float]:
    """A `workers.train.loop.StepResult` as flat MLflow metrics.

    tokens_per_s and utilisation are measured by the caller (they need wall time and a peak);
    left out when None rather than logged as a misleading 0.
    """
    metrics = {"loss": result.loss, "lr": result.lr, "grad_norm": result.grad_norm,
               "aux_loss": result.aux_loss, "z_loss": result.z_loss, **result.stats}
    if tokens_per_s is not None:
        metrics["tokens_per_s"] = tokens_per_s
    if utilisation is not None:
        metrics["utilisation"] = utilisation
    counts = np.asarray(result.tokens_per_expert, dtype=np.float64).reshape(
        len(result.router_entropy), -1)  # (n_moe_layers, E)
    entropy = np.asarray(result.router_entropy, dtype=np.float64)
    names = list(layer_names) if layer_names is not None else moe_layer_names(len(counts))
    if len(names) != len(counts):
        raise ValueError(f"{len(names)} layer names for {len(counts)} MoE layers")
    load = counts.max(axis=1) / np.maximum(counts.mean(axis=1), 1e-9)
    for name, layer_load, layer_entropy in zip(names, load, entropy):
        prefix = check_metric_name(f"moe/{name}")
        metrics[f"{prefix}/max_over_mean_load"] = float(layer_load)  # 1.0 = perfectly balanced
        metrics[f"{prefix}/router_entropy"] = float(layer_entropy)  # nats; ln(E) = uniform
        # Always 0.0: this MoE is dropless (every top-k assignment is computed). It is logged so
        # dashboards that compare against capacity-factor MoEs, which drop overflow, line up.
        metrics[f"{prefix}/dropped_fraction"] = 0.0
    return {k: float(v) for k, v in metrics.items()}


def expert_load_heatmap(counts, title: str = "expert load",
                        layer_names: Sequence[str] | None = None):
    """Share of each layer's routed tokens per expert, in colours diverging from the uniform share.

    Red: overloaded expert, blue: underused, white: exactly 1/E. Cells carry percentages while
    the grid is small enough to read them.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.size == 0:
        raise ValueError(f"counts must be (layers, experts), got shape {counts.shape}")
    n_layers, n_experts = counts.shape
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    uniform = 1.0 / n_experts
    names = list(layer_names) if layer_names is not None else moe_layer_names(n_layers)

    fig, ax = plt.subplots(figsize=(min(max(6.5, 2.5 + 0.6 * n_experts), 20),
                                    min(max(2.8, 1.6 + 0.45 * n_layers), 14)))
    norm = TwoSlopeNorm(vmin=0.0, vcenter=uniform, vmax=max(share.max(), 2 * uniform))
    image = ax.imshow(share, cmap="RdBu_r", norm=norm, aspect="auto", interpolation="nearest")
    if n_experts <= 32 and n_layers <= 32:
        for (i, j), value in np.ndenumerate(share):
            dark = abs(norm(value) - 0.5) > 0.3  # saturated cell: white text stays readable
            ax.text(j, i, f"{100 * value:.1f}", ha="center", va="center",
                    fontsize=8 if n_experts <= 16 else 6, color="white" if dark else "black")
    ax.set_xticks(range(0, n_experts, max(1, n_experts // 32)))
    ax.set_yticks(range(n_layers), names)
    ax.set_xlabel("expert")
    worst = share.max(axis=1).max() / uniform
    ax.set_title(f"{title}\n% of each layer's routed tokens per expert; uniform = "
                 f"{100 * uniform:.1f}% (white), worst max/mean = {worst:.2f}", fontsize=9)
    bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03, format=PercentFormatter(1.0, 0))
    bar.ax.axhline(uniform, color="black", linewidth=1.5)  # the uniform share on the scale
    bar.set_label("share of tokens", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def _by_step(steps: Sequence[int], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted by step, the last value kept for a repeated step: MLflow's metric history is not
    ordered by step, and a resumed run logs the steps after its last checkpoint again."""
    if len(steps) != len(values):
        raise ValueError(f"{len(steps)} steps for {len(values)} losses")
    latest = dict(zip((int(s) for s in steps), (float(v) for v in values)))
    order = sorted(latest)
    return np.asarray(order, dtype=np.int64), np.asarray([latest[s] for s in order])


def loss_curve_figure(steps: Sequence[int], train_losses: Sequence[float],
                      val_steps: Sequence[int] = (), val_losses: Sequence[float] = ()):
    """Training loss (raw, faint, and smoothed) and validation loss against the optimizer step."""
    steps, train = _by_step(steps, train_losses)
    val_steps, val = _by_step(val_steps, val_losses)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, train, color="#4C72B0", alpha=0.3, linewidth=0.8, label="train (per step)")
    finite = train[np.isfinite(train)]
    if len(finite) >= 10:  # an exponential moving average shows the trend through step noise
        alpha, smooth, acc = 2 / (1 + max(5, len(train) // 20)), [], finite[0]
        for value in train:
            acc = alpha * value + (1 - alpha) * acc if math.isfinite(value) else acc
            smooth.append(acc)
        ax.plot(steps, smooth, color="#4C72B0", linewidth=1.8, label="train (smoothed)")
    if len(val_steps):
        ax.plot(val_steps, val, "o-", color="#DD8452", linewidth=1.5, markersize=4,
                label="validation")
        if np.isfinite(val).any():
            best = int(np.nanargmin(np.where(np.isfinite(val), val, np.nan)))
            ax.annotate(f"best {val[best]:.3f}", (val_steps[best], val[best]),
                        textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig
