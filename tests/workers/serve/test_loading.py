"""What a replica serves: a registered MLflow model by alias or version, or a checkpoint folder,
verified before loading; `longmix serve` refuses a damaged folder before deploying anything."""

import mlflow
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from infra.registry import log_checkpoint_model
from infra.settings import Settings
from infra.tracking import configure_mlflow
from model.checkpoint import CheckpointError
from workers.serve.loading import load_served_model


@pytest.fixture
def registry(tmp_path, monkeypatch):
    settings = Settings(home=tmp_path / "home")
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    experiment_id = configure_mlflow(settings)
    client = MlflowClient(settings.tracking_uri)
    yield settings, client, client.create_run(experiment_id).info.run_id
    mlflow.set_tracking_uri(None)


def test_a_registered_model_is_served_by_alias_or_version(registry, served_checkpoint):
    settings, client, run_id = registry
    ref = log_checkpoint_model(served_checkpoint, run_id, registered_name="longmix-serve")
    client.set_registered_model_alias("longmix-serve", "champion", str(ref.version))
    for uri in ("models:/longmix-serve@champion", f"models:/longmix-serve/{ref.version}"):
        served = load_served_model(uri, settings)
        assert (served.name, served.digest, served.source) == ("longmix-serve", ref.digest, uri)
    named = load_served_model("models:/longmix-serve@champion",
                              settings.model_copy(update={"serve_model_name": "prod"}))
    assert named.name == "prod"


def test_a_damaged_checkpoint_is_refused(served_checkpoint, tmp_path):
    from shutil import copytree

    from pipelines.cli import app

    damaged = copytree(served_checkpoint, tmp_path / "damaged")
    (damaged / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="config.json"):
        load_served_model(str(damaged), Settings(home=tmp_path))
    result = CliRunner().invoke(app, ["serve", "--model", str(damaged), "--detach"])
    output = result.output.replace("\n", "")  # rich wraps long lines
    assert result.exit_code == 2 and "refused" in output and "config.json" in output
