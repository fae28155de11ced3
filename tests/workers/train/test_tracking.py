"""Training telemetry and the checkpoint model against real MLflow (SQLite in tmp_path)."""

import hashlib
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from infra.registry import DIGEST_TAG, download_checkpoint, log_checkpoint_model
from infra.settings import Settings
from infra.tracking import configure_mlflow
from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, write_digest
from model.checkpoint import checkpoint_digest
from model.config import get_preset
from model.encoders import Media
from model.generate import SamplingParams, generate
from model.tokenizer import Tokenizer
from model.transformer import Transformer
from workers.data.pack import PackedSequences
from workers.data.sources import python_docs_corpus
from workers.train.data import Batch
from workers.train.loop import OptimConfig, make_optimizer, train_step
from workers.train.tracking import (MetricsLogger, expert_load_heatmap, loss_curve_figure,
                                    moe_layer_names, step_metrics)


@pytest.fixture(scope="module")
def template_db(tmp_path_factory):
    """An empty MLflow database, migrated once: creating one costs seconds, copying it does not."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking(tmp_path, template_db, monkeypatch):
    """This test's own tracking store, set up the way the project does it; reset afterwards."""
    settings = Settings(home=tmp_path / "home")
    settings.home.mkdir()
    shutil.copy(template_db, settings.home / "mlflow.db")
    # set_experiment keeps the id in a module global; monkeypatch restores it after the test
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    experiment_id = configure_mlflow(settings)
    client = MlflowClient(settings.tracking_uri)
    yield SimpleNamespace(uri=settings.tracking_uri, experiment_id=experiment_id, client=client,
                          run_id=client.create_run(experiment_id).info.run_id)
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def step_result():
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    model = Transformer(cfg)
    tokens = torch.randint(20, cfg.vocab_size, (4, 33))
    batch = Batch(PackedSequences(tokens, torch.zeros_like(tokens)), Media())
    optim = OptimConfig(warmup_steps=0, total_steps=2)
    return train_step(model, make_optimizer(model, optim), [batch], 0, optim)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = Tokenizer.train(python_docs_corpus()[:50], 300)
    model = Transformer(get_preset("tiny", vocab_size=tokenizer.vocab_size))
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    save_checkpoint(folder, model, tokenizer)
    return folder


def test_step_metrics_are_flat_valid_names(step_result):
    metrics = step_metrics(step_result, moe_layer_names(2), tokens_per_s=1234.5, utilisation=0.25)
    assert {"loss", "lr", "grad_norm", "aux_loss", "z_loss", "tokens_per_s",
            "utilisation"} <= set(metrics)
    assert metrics["loss"] == step_result.loss and metrics["tokens_per_s"] == 1234.5
    for i in range(2):
        counts = step_result.tokens_per_expert[i].float()
        assert metrics[f"moe/layer{i}/max_over_mean_load"] == pytest.approx(
            float(counts.max() / counts.mean()))
        assert metrics[f"moe/layer{i}/router_entropy"] == pytest.approx(
            float(step_result.router_entropy[i]))
        assert metrics[f"moe/layer{i}/dropped_fraction"] == 0.0
    assert "tokens_per_s" not in step_metrics(step_result)  # unmeasured: left out, not 0
    assert moe_layer_names(4, n_dense_layers=1) == ["layer1", "layer2", "layer3"]
    with pytest.raises(ValueError, match="layer names"):
        step_metrics(step_result, ["only-one"])


def test_metrics_logger_batches_into_the_run_without_fluent_state(tracking, step_result):
    mlflow.set_tracking_uri(None)  # the worker's process: no fluent tracking set up at all
    metrics = step_metrics(step_result, tokens_per_s=100.0, utilisation=0.1)
    with MetricsLogger(tracking.uri, tracking.run_id, flush_every_steps=3, flush_every_s=3600,
                       background=False) as log:
        for step in range(7):
            log.log_step(step, {**metrics, "loss": 10.0 - step})
        written = tracking.client.get_metric_history(tracking.run_id, "loss")
        assert [m.step for m in written] == [0, 1, 2, 3, 4, 5]  # two flushes of 3; 1 pending
        with pytest.raises(ValueError, match="invalid MLflow metric name"):
            log.log_step(7, {"bad//name": 1.0})
    history = tracking.client.get_metric_history(tracking.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(s, 10.0 - s) for s in range(7)]
    run = tracking.client.get_run(tracking.run_id)
    assert run.data.metrics["moe/layer1/dropped_fraction"] == 0.0
    assert set(metrics) <= set(run.data.metrics)
    assert log.write_seconds > 0
    with pytest.raises(RuntimeError, match="closed"):
        log.log_step(8, {"loss": 1.0})


def test_background_writes_land_by_close_and_survive_an_outage(tracking, monkeypatch):
    log = MetricsLogger(tracking.uri, tracking.run_id, flush_every_steps=2, flush_every_s=0.05)
    real_log_batch = log.client.log_batch
    monkeypatch.setattr(log.client, "log_batch", lambda *a, **k: 1 / 0)  # tracking server down
    for step in range(5):
        log.log_step(step, {"loss": float(step), "lr": 0.1})
    log._write_quietly()  # a failed write warns and keeps everything
    assert len(log._pending) == 10
    monkeypatch.setattr(log.client, "log_batch", real_log_batch)
    for step in range(5, 40):
        log.log_step(step, {"loss": float(step), "lr": 0.1})
    log.close()
    history = tracking.client.get_metric_history(tracking.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(40))  # each once, none lost

    slow = MetricsLogger(tracking.uri, tracking.run_id, flush_every_steps=1000, flush_every_s=0.05)
    slow.log_step(0, {"tokens_per_s": 1.0})  # a slow step: the period alone gets it written
    deadline = time.monotonic() + 10
    while not tracking.client.get_metric_history(tracking.run_id, "tokens_per_s"):
        assert time.monotonic() < deadline, "not written within the flush period"
        time.sleep(0.05)
    slow.close()


def test_figures_are_logged_as_png_artifacts(tracking, step_result, tmp_path):
    heatmap = expert_load_heatmap(step_result.tokens_per_expert.numpy(), "tiny, step 0",
                                  layer_names=moe_layer_names(2))
    steps = [*range(30), *range(20, 40)]  # a resume repeats steps 20..29; out of order too
    curve = loss_curve_figure(steps[::-1], [6 - 0.1 * s for s in steps][::-1], [39, 19], [2.4, 4.3])
    line = curve.axes[0].lines[0]
    assert list(line.get_xdata()) == list(range(40))
    heatmap.savefig(tmp_path / "expert_load.png")  # for a look by eye
    with MetricsLogger(tracking.uri, tracking.run_id) as log:
        log.log_figure(heatmap, "training/expert_load.png")
        log.log_figure(curve, "training/loss_curve.png")
    names = {a.path for a in tracking.client.list_artifacts(tracking.run_id, "training")}
    assert names == {"training/expert_load.png", "training/loss_curve.png"}
    local = tracking.client.download_artifacts(tracking.run_id, "training/expert_load.png",
                                               str(tmp_path))
    assert open(local, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="layers, experts"):
        expert_load_heatmap([1, 2, 3])


def test_checkpoint_is_logged_registered_served_and_downloaded(tracking, checkpoint, tmp_path):
    digest = checkpoint_digest(checkpoint)
    assert digest == hashlib.sha256((checkpoint / "digest.json").read_bytes()).hexdigest()

    first = log_checkpoint_model(checkpoint, tracking.run_id, registered_name="longmix-tiny",
                                 tags={"longmix.dataset_digest": "abc123",
                                       "longmix.stage": "pretrain"})
    second = log_checkpoint_model(checkpoint, tracking.run_id, registered_name="longmix-tiny",
                                  tags={"longmix.stage": "sft"})
    assert (first.version, second.version) == (1, 2)
    assert first.model_id.startswith("m-") and first.model_id != second.model_id
    assert first.model_uri == f"models:/{first.model_id}" and first.digest == digest

    logged = tracking.client.get_logged_model(first.model_id)
    assert logged.source_run_id == tracking.run_id and logged.tags[DIGEST_TAG] == digest
    found = mlflow.search_logged_models(experiment_ids=[tracking.experiment_id],
                                        output_format="list")
    assert {m.model_id for m in found} == {first.model_id, second.model_id}
    assert tracking.client.get_run(tracking.run_id).info.status == "RUNNING"  # left as it was

    version = tracking.client.get_model_version("longmix-tiny", "1")
    assert version.tags == {DIGEST_TAG: digest, "longmix.dataset_digest": "abc123",
                            "longmix.stage": "pretrain"}
    assert tracking.client.get_model_version("longmix-tiny", "2").tags["longmix.stage"] == "sft"

    outputs = mlflow.pyfunc.load_model("models:/longmix-tiny/1").predict(
        ["def f(", "import os"], params={"max_new_tokens": 4})
    model, tokenizer = load_checkpoint(checkpoint)  # the pyfunc is greedy generate
    assert outputs == [generate(model.eval(), tokenizer, tokenizer.encode(p, bos=True),
                                SamplingParams(max_new_tokens=4)).text
                       for p in ("def f(", "import os")]

    tracking.client.set_registered_model_alias("longmix-tiny", "champion", "2")
    fetched = download_checkpoint("models:/longmix-tiny@champion", tmp_path / "serve" / "ckpt")
    assert fetched == tmp_path / "serve" / "ckpt"
    assert json.loads((fetched / "digest.json").read_text()) == json.loads(
        (checkpoint / "digest.json").read_text())
    load_checkpoint(fetched)
    assert download_checkpoint(first, fetched) == fetched  # a ModelRef; replaces the old copy
    load_checkpoint(download_checkpoint(second.model_uri, tmp_path / "id", expected_digest=digest))
    with pytest.raises(CheckpointError, match="expected"):  # e.g. an approval of another digest
        download_checkpoint(second, tmp_path / "other", expected_digest="0" * 64)


def test_download_refuses_a_tampered_artifact(tracking, checkpoint, tmp_path):
    ref = log_checkpoint_model(checkpoint, tracking.run_id, registered_name="tampered", tags={})
    stored = (tracking.client.get_logged_model(ref.model_id).artifact_location
              + "/artifacts/" + checkpoint.name)
    weights = f"{stored}/model.safetensors"
    data = bytearray(open(weights, "rb").read())
    data[-1] ^= 0xFF
    open(weights, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match="does not match"):
        download_checkpoint(ref.version_uri, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()

    write_digest(Path(stored))  # a consistent rewrite: only the tag catches it
    with pytest.raises(CheckpointError, match=DIGEST_TAG):
        download_checkpoint(ref.version_uri, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()
    with pytest.raises(ValueError, match="is not this checkpoint"):
        log_checkpoint_model(checkpoint, tracking.run_id, registered_name="x",
                             tags={DIGEST_TAG: "0" * 64})
    with mlflow.start_run(), pytest.raises(ValueError, match="is active in this process"):
        log_checkpoint_model(checkpoint, tracking.run_id, registered_name="x")
