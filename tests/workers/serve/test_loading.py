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


def test_a_replica_serves_only_the_approved_digest(registry, served_checkpoint, tmp_path):
    """Other files under the version, with a digest tag rewritten to match them, are refused:
    the replica is given the approved digest from the deployment record, not from the tag."""
    from shutil import copytree

    from infra.registry import DIGEST_TAG
    from model.checkpoint import save_checkpoint
    from model.config import get_preset
    from model.transformer import Transformer

    settings, client, run_id = registry
    approved = log_checkpoint_model(served_checkpoint, run_id, registered_name="pinned")
    served = load_served_model(f"models:/pinned/{approved.version}", settings, approved.digest)
    assert served.digest == approved.digest
    other = tmp_path / "other"
    save_checkpoint(other, Transformer(get_preset("tiny")), served.tokenizer)
    swapped = log_checkpoint_model(other, run_id, registered_name="pinned")
    client.set_model_version_tag("pinned", str(swapped.version), DIGEST_TAG, swapped.digest)
    with pytest.raises(CheckpointError, match="is not the expected"):
        load_served_model(f"models:/pinned/{swapped.version}", settings, approved.digest)
    folder = copytree(other, tmp_path / "folder")
    with pytest.raises(CheckpointError, match="not the approved .*refusing to serve"):
        load_served_model(str(folder), settings, approved.digest)


def test_a_damaged_checkpoint_is_refused(served_checkpoint, tmp_path):
    from shutil import copytree

    from pipelines.cli import app

    damaged = copytree(served_checkpoint, tmp_path / "damaged")
    (damaged / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="config.json"):
        load_served_model(str(damaged), Settings(home=tmp_path))
    result = CliRunner().invoke(app, ["serve", "--model", str(damaged), "--detach", "--unapproved"])
    output = result.output.replace("\n", "")  # rich wraps long lines
    assert result.exit_code == 2 and "refused" in output and "config.json" in output


def test_serve_refuses_what_no_approval_covers(registry, served_checkpoint, monkeypatch):
    """By alias, version or folder: without --unapproved only an approved version serves, and an
    alias is resolved to the version whose approval is checked."""
    from infra.settings import get_settings
    from pipelines.cli import app

    settings, client, run_id = registry
    monkeypatch.setenv("LONGMIX_HOME", str(settings.home))
    ref = log_checkpoint_model(served_checkpoint, run_id, registered_name="longmix")
    client.set_registered_model_alias("longmix", "champion", str(ref.version))
    get_settings.cache_clear()
    try:
        for model, reason in ((str(served_checkpoint), "only a registered version"),
                              ("models:/longmix@champion", f"longmix/{ref.version} is not "),
                              (f"models:/longmix/{ref.version}", "is not approved")):
            result = CliRunner().invoke(app, ["serve", "--model", model, "--detach"])
            output = result.output.replace("\n", "")
            assert result.exit_code == 2 and "refused" in output and reason in output, output
    finally:
        get_settings.cache_clear()
