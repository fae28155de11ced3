"""The eval worker: a suite against one model, compared with the champion on the same data,
written as the eval report and logged to MLflow. Callable without Prefect or the CLI."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from infra.settings import Settings, get_settings
from workers.evals.config import SuiteConfig, get_suite
from workers.evals.endpoint_adapter import EndpointAdapter
from workers.evals.heldout import load_heldout
from workers.evals.models import ModelSpec, resolve_model
from workers.evals.report import EvalReport, build_report, compare, read_report, write_report
from workers.evals.runner import run_evals


@dataclass
class EvalOutcome:
    report: EvalReport
    path: Path  # report.json
    run_id: str | None  # the MLflow run


def _cache_key(spec: ModelSpec, cfg: SuiteConfig, data_digest: str) -> str | None:
    """Champion results are reused while the weights, the suite and the data are the same."""
    if spec.digest is None:
        return None  # an endpoint: what it serves may change, so never cached
    suite = hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()
    return f"{spec.digest[:16]}-{suite[:12]}-{data_digest[:12]}"


def champion_report(spec: ModelSpec, cfg: SuiteConfig, manifest: str | None, split: str,
                    settings: Settings, executor: str) -> EvalReport:
    data = load_heldout(manifest, split, 4 * cfg.ppl_sequences)
    key = _cache_key(spec, cfg, data.digest)
    cached = settings.home / "evals" / "champions" / f"{key}.json"
    if key and cached.is_file():
        return read_report(cached)
    report = build_report(spec, cfg, data, run_evals(spec, cfg, manifest, split, executor))
    if key:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(report.model_dump_json())
    return report


def default_champion(model: str) -> str | None:
    """models:/NAME@champion for a registered model that has that alias; else none."""
    if not model.startswith("models:/") or model.removeprefix("models:/").startswith("m-"):
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name = model.removeprefix("models:/").split("@")[0].split("/")[0]
    try:
        MlflowClient().get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    return f"models:/{name}@champion"


def evaluate(model: str, suite: str | SuiteConfig = "demo", *, manifest: str | None = None,
             split: str = "test", champion: str | None = None, out: Path | None = None,
             settings: Settings | None = None, api_key: str | None = None,
             endpoint_model: str | None = None, executor: str = "ray",
             log_to_mlflow: bool = True) -> EvalOutcome:
    settings = settings or get_settings()
    cfg = get_suite(suite) if isinstance(suite, str) else suite
    if log_to_mlflow or model.startswith("models:/"):
        from infra.tracking import configure_mlflow

        configure_mlflow(settings)
    spec = resolve_model(model, settings, api_key, endpoint_model)
    if spec.endpoint is not None:
        EndpointAdapter(spec.endpoint).check()  # a wrong URL, key or model fails before any task
    data = load_heldout(manifest, split, 4 * cfg.ppl_sequences)  # so does bad data
    results = run_evals(spec, cfg, manifest, split, executor)
    report = build_report(spec, cfg, data, results)
    champion = champion or default_champion(model)
    if champion:
        champion_spec = resolve_model(champion, settings, api_key, endpoint_model)
        if champion_spec.digest is None or champion_spec.digest != spec.digest:
            theirs = champion_report(champion_spec, cfg, manifest, split, settings, executor)
            report.champion = theirs.model
            report.comparison = compare(report, theirs)
            report.seal()
    folder = out or settings.home / "evals" / "reports" / f"{report.digest[:16]}"
    path = write_report(report, results, Path(folder))
    run_id = None
    if log_to_mlflow:
        from workers.evals.tracking import log_report

        run_id = log_report(report, results, Path(folder))
    return EvalOutcome(report, path, run_id)


def summary_rows(report: EvalReport) -> list[tuple[str, str, str, str]]:
    """(metric, value, samples, vs champion) for printing."""
    deltas = {c.metric: c for c in report.comparison}
    rows = []
    for m in report.metrics:
        c = deltas.get(m.name)
        vs = "" if c is None else f"{c.delta:+.4g}{' (worse)' if c.regressed else ''}"
        rows.append((m.name, f"{m.value:.4g}", str(m.count), vs))
    return rows

