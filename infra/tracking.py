"""MLflow set-up for the embedded default (SQLite + a local artifact folder) and the cluster
(a tracking server, S3 artifacts): the same calls, chosen by settings."""

from __future__ import annotations

from infra.settings import Settings, get_settings


def configure_mlflow(settings: Settings | None = None, experiment: str | None = None) -> str:
    """Point MLflow at the configured tracking store; create the experiment; return its id."""
    import mlflow

    settings = settings or get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    name = experiment or settings.mlflow_experiment
    found = mlflow.get_experiment_by_name(name)
    if found is None:
        experiment_id = mlflow.create_experiment(
            name, artifact_location=f"{settings.artifact_root.rstrip('/')}/{name}")
    else:
        experiment_id = found.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def registry_client(settings: Settings | None = None):
    """An MlflowClient on the configured tracking store and registry."""
    from mlflow import MlflowClient

    configure_mlflow(settings)
    return MlflowClient()
