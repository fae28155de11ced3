"""The whole suite end to end on the session's trained checkpoint, registered in MLflow: every
eval as a Ray task, the eval report (contract 4), MLflow logging against the model, regression
against the champion (cached by digest), and the `longmix eval` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.settings import Settings
from workers.evals.config import EVALS, get_suite
from workers.evals.report import read_report
from workers.evals.suite import evaluate

from .conftest import SAFETY_DATA


@pytest.fixture(scope="module")
def registry(trained, tmp_path_factory):
    """The trained checkpoint as version 1 and the untrained one as version 2 of `evals-tiny`."""
    import mlflow

    from infra.registry import log_checkpoint_model
    from infra.tracking import configure_mlflow

    settings = Settings(home=tmp_path_factory.mktemp("evals-home"))
    configure_mlflow(settings)
    with mlflow.start_run(run_name="register") as run:
        pass
    trained_ref = log_checkpoint_model(trained.checkpoint, run.info.run_id,
                                       registered_name="evals-tiny")
    untrained_ref = log_checkpoint_model(trained.untrained, run.info.run_id,
                                         registered_name="evals-tiny")
    return settings, trained_ref, untrained_ref


def test_the_tiny_suite_end_to_end(ray_local, trained, registry, tmp_path):
    import mlflow

    settings, ref, _ = registry
    cfg = get_suite("tiny", safety_data=SAFETY_DATA if SAFETY_DATA.is_dir() else None)
    outcome = evaluate(ref.version_uri, cfg, manifest=str(trained.dataset), settings=settings,
                       out=tmp_path / "report")
    report = read_report(outcome.path)
    assert report.model.digest == ref.digest and report.model.model_id == ref.model_id
    assert report.data == {"name": "evals-test/test", "digest": report.data["digest"],
                           "held_out": True}
    assert set(report.evals) == set(EVALS)
    assert not [name for name, e in report.evals.items() if e.skipped]
    datasets = {d.name: d for d in report.datasets}
    for m in report.metrics:
        assert m.count > 0 and m.dataset in datasets and math.isfinite(m.value), m
    names = {m.name for m in report.metrics}
    for modality in ("text", "audio", "video"):
        assert f"perplexity.{modality}.nll" in names
    assert {"niah_text.accuracy", "niah_text.rank_top1", "multi_needle.recall",
            "niah_audio.mean_rank", "niah_video.accuracy", "pii.mean_exposure",
            "injection.heldout.success_rate", "toxicity.builtin.mean_toxicity"} <= names
    assert all(m.calibration_accuracy >= 0.92 for m in report.metrics if "refusal_rate" in m.name)
    assert 0 <= report.value("pii.mean_exposure") <= math.log2(cfg.pii_candidates + 1)

    # the model learned its text: the cumulative NLL falls with position
    curve = json.loads((tmp_path / "report/tables/perplexity_text.json").read_text())
    assert curve[-1]["cumulative_nll"] < curve[0]["cumulative_nll"]
    for figure in ("perplexity_vs_position.png", "niah_text_heatmap.png",
                   "niah_audio_heatmap.png", "niah_video_heatmap.png"):
        assert (tmp_path / "report/figures" / figure).read_bytes()[:4] == b"\x89PNG"
    grid = json.loads((tmp_path / "report/tables/niah_text.json").read_text())
    assert len(grid) == len(cfg.niah_lengths) * cfg.niah_depths

    run = mlflow.get_run(outcome.run_id)
    assert run.data.metrics["niah_text.accuracy"] == report.value("niah_text.accuracy")
    assert run.data.tags["longmix.digest"] == ref.digest
    logged = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    assert logged["niah_text/evals-test/test"] == datasets["niah_text/evals-test/test"].digest[:36]
    model_metrics = {m.key for m in mlflow.get_logged_model(ref.model_id).metrics}
    assert "niah_text.rank_top1" in model_metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(outcome.run_id, "tables")}
    assert "tables/niah_text.json" in artifacts


def test_regression_against_the_champion_is_cached_by_digest(trained, registry, monkeypatch):
    import mlflow

    from workers.evals import suite

    settings, ref, untrained = registry
    mlflow.MlflowClient().set_registered_model_alias("evals-tiny", "champion", untrained.version)
    cfg = get_suite("tiny", evals=("perplexity", "niah_text"))
    first = evaluate(ref.version_uri, cfg, manifest=str(trained.dataset), settings=settings,
                     executor="inline", log_to_mlflow=False)
    assert first.report.champion.digest == untrained.digest
    deltas = {c.metric: c for c in first.report.comparison}
    assert deltas["perplexity.text.nll"].delta < 0  # trained beats its own initialisation
    assert not deltas["perplexity.text.nll"].regressed

    calls = []
    real = suite.run_evals
    monkeypatch.setattr(suite, "run_evals",
                        lambda *a, **k: calls.append(a[0].source) or real(*a, **k))
    again = evaluate(ref.version_uri, cfg, manifest=str(trained.dataset), settings=settings,
                     executor="inline", log_to_mlflow=False)
    assert calls == [ref.version_uri]  # the champion's results came from the cache
    assert again.report.comparison == first.report.comparison


def test_the_eval_command(trained, tmp_path, monkeypatch):
    from infra.settings import get_settings
    from pipelines.cli import app

    monkeypatch.setenv("LONGMIX_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        ok = runner.invoke(app, ["eval", "--model", str(trained.checkpoint), "--suite", "tiny",
                                 "--evals", "niah_text,perplexity", "--lengths", "160",
                                 "--depths", "2", "--dataset", str(trained.dataset),
                                 "--no-mlflow", "--inline", "--out", str(tmp_path / "r")])
        assert ok.exit_code == 0, ok.output
        assert "niah_text.accuracy" in ok.output and "report " in ok.output
        report = read_report(Path(tmp_path / "r/report.json"))
        assert report.suite["niah_lengths"] == [160] and report.suite["niah_depths"] == 2
        missing = runner.invoke(app, ["eval", "--model", str(tmp_path / "nope"), "--no-mlflow"])
        assert missing.exit_code == 2 and "not a checkpoint folder" in missing.output
        unknown = runner.invoke(app, ["eval", "--model", str(trained.checkpoint), "--evals",
                                      "niah_text,mmlu", "--no-mlflow"])
        assert unknown.exit_code == 2 and "unknown evals ['mmlu']" in unknown.output
    finally:
        get_settings.cache_clear()
