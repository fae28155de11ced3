import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from infra.settings import get_settings
from pipelines.cli import app

runner = CliRunner()


@pytest.fixture
def longmix_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGMIX_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()
    mlflow.set_tracking_uri(None)


def test_data_build_writes_shards_and_logs_the_dataset_to_mlflow(ray_local, longmix_home, tmp_path):
    spec = tmp_path / "small.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "cli-small", "preset": "tiny", "media": {"image_size": 16},
        "sources": [{"name": "docs", "modality": "text", "reader": "pydoc-topics",
                     "options": {"max_docs": 25}},
                    {"name": "digits", "modality": "image", "reader": "sklearn-digits",
                     "options": {"max_docs": 4}}],
        "tokenizer": {"vocab_size": 300, "sample_bytes": 20000}, "packing": {"seq_len": 128}}))
    out = tmp_path / "dataset"
    result = runner.invoke(app, ["data", "build", "--spec", str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "logged to MLflow run" in result.output

    verified = runner.invoke(app, ["data", "verify", str(out)])
    assert verified.exit_code == 0 and "verified" in verified.output

    client = MlflowClient(get_settings().tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("longmix").experiment_id])
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "cli-small"
    assert run.data.params["dataset_digest"] in {t.value for t in dataset_input.tags}
    assert run.data.metrics["train_rows"] > 0 and run.data.metrics["train_tokens_image"] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "dataset")}
    assert artifacts == {"dataset/manifest.json", "dataset/token_mix.png"}


def test_a_bad_spec_is_refused_before_any_work(longmix_home, tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\nsources:\n  - {name: x, modality: text, reader: nope}\n")
    result = runner.invoke(app, ["data", "build", "--spec", str(spec), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "reader 'nope' is unknown" in result.output
    assert not (tmp_path / "o").exists()


def test_verify_refuses_a_missing_dataset(tmp_path):
    missing = runner.invoke(app, ["data", "verify", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "unreadable manifest" in missing.output
