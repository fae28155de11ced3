"""The eval report in MLflow, against the evaluated model: one run with the metrics (linked to
the LoggedModel and to the dataset each was measured on), the eval datasets as inputs with their
digests, per-sample tables (log_table), and the report folder (figures included) as artifacts."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from infra.registry import DIGEST_TAG
from workers.evals.report import EvalReport
from workers.evals.results import EvalResult


def _frame(rows: list[dict]):
    """Rows as a DataFrame of scalars: nested values become JSON strings."""
    import pandas as pd

    return pd.DataFrame([{k: v if isinstance(v, (str, int, float, bool, type(None)))
                          else json.dumps(v, default=str) for k, v in row.items()}
                         for row in rows])


def log_report(report: EvalReport, results: list[EvalResult], folder: Path) -> str:
    """Log to the active experiment (infra.tracking.configure_mlflow); returns the run id."""
    import mlflow
    from mlflow.entities import LoggedModelInput

    model_id = report.model.model_id
    name = f"eval {Path(report.model.source).name or report.model.source} ({report.suite['name']})"
    with mlflow.start_run(run_name=name) as run, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*integer column.*")  # schema inference hint
        tags = {"longmix.kind": "eval", "longmix.eval_suite": report.suite["name"],
                "longmix.eval_model": report.model.source, "longmix.eval_report": report.digest}
        if report.model.digest:
            tags[DIGEST_TAG] = report.model.digest
        mlflow.set_tags(tags)
        mlflow.log_params({"suite": report.suite["name"], "data": report.data["name"],
                           "data_digest": report.data["digest"],
                           "evals": ",".join(report.suite["evals"])})
        logged = {}
        for ds in report.datasets:
            dataset = mlflow.data.from_pandas(_frame(ds.rows or [{"empty": True}]),
                                              name=ds.name, digest=ds.digest[:36])
            mlflow.log_input(dataset, context="evaluation",
                             model=LoggedModelInput(model_id) if model_id else None)
            logged[ds.name] = dataset
        for m in report.metrics:
            mlflow.log_metrics({m.name: m.value}, model_id=model_id, dataset=logged.get(m.dataset))
        for c in report.comparison:
            mlflow.log_metrics({f"delta.{c.metric}": c.delta}, model_id=model_id)
        for r in results:
            for table, rows in r.tables.items():
                if rows:
                    mlflow.log_table(_frame(rows), artifact_file=f"tables/{table}.json")
        mlflow.log_artifacts(str(folder), "eval_report")
    return run.info.run_id
