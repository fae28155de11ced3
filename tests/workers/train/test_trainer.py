"""Ray Train end to end on local Ray: two CPU workers, exact resume after a killed worker,
MLflow tracking and registration, stages chained by checkpoint, and the configurations refused
up front (checkpoints on S3: tests/pipelines/test_pipeline_e2e.py)."""

import contextlib
import json
import shutil
import signal
import threading
import time

import mlflow
import psutil
import pytest
from mlflow.tracking import MlflowClient

from infra.settings import Settings
from workers.data.build import build_dataset
from workers.data.manifest import read_manifest
from workers.data.spec import parse_spec
from workers.train.config import TrainConfigError, parse_train_config, plan_stage
from workers.train.data import split_dataset
from workers.train.trainer import train


def _spec(name, seq_len, **extra):
    return parse_spec({
        "name": name, "preset": "tiny", "media": {"image_size": 16},
        "sources": [{"name": "docs", "modality": "text", "reader": "pydoc-topics",
                     "options": {"max_docs": 40}},
                    {"name": "digits", "modality": "image", "reader": "sklearn-digits",
                     "options": {"max_docs": 8}}],
        "splits": {"validation_percent": 10, "test_percent": 0},
        "packing": {"seq_len": seq_len}, "synthetic": {"chat": 12}, **extra})


@pytest.fixture(scope="module")
def dataset(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("train-data")
    build_dataset(_spec("train-tiny", 128, tokenizer={"vocab_size": 300, "sample_bytes": 30000}),
                  str(out), str(tmp_path_factory.mktemp("cache")))
    return out


@pytest.fixture
def settings(tmp_path):
    yield Settings(home=tmp_path / "home")
    mlflow.set_tracking_uri(None)


def _config(dataset, **changes):
    base = {"dataset": str(dataset), "steps": 8, "batch_size": 2, "workers": 2, "lr": 3e-3,
            "checkpoint_every": 4, "eval_every": 4, "eval_batches": 1, "registered_model": "tiny"}
    return parse_train_config({**base, **changes})


def _history(settings, run_id, key):
    points = MlflowClient(settings.tracking_uri).get_metric_history(run_id, key)
    return {p.step: p.value for p in sorted(points, key=lambda p: p.timestamp)}  # last write wins


def test_two_workers_train_log_and_register(dataset, settings):
    result = train(_config(dataset), settings)
    client = MlflowClient(settings.tracking_uri)
    loss = _history(settings, result.run_id, "loss")
    assert sorted(loss) == list(range(1, 9))
    assert loss[8] < loss[1]
    metrics = client.get_run(result.run_id).data.metrics
    for key in ("val_loss", "lr", "grad_norm", "tokens_per_s", "utilisation", "aux_loss", "z_loss",
                "moe/layer0/max_over_mean_load", "moe/layer1/router_entropy",
                "system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        assert key in metrics, key
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "training")}
    assert {"training/expert_load.png", "training/loss_curve.png"} <= artifacts
    version = client.get_model_version("tiny", str(result.model_version))
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert version.tags["longmix.stage"] == "pretrain"
    assert version.tags["longmix.dataset_digest"] == manifest["digest"]
    assert (result.checkpoint / "training_state" / "state.json").is_file()


def _kill_a_worker_once_past(settings, step: int, killed: list) -> threading.Thread:
    """Watch MLflow; when the run has logged `step`, SIGKILL a Ray Train worker process of this
    session's Ray (a descendant of this process: another test process's Ray is left alone)."""
    def watch():
        client = MlflowClient(settings.tracking_uri)
        deadline = time.time() + 300
        while time.time() < deadline:
            time.sleep(0.5)
            try:
                runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                          "attributes.status = 'RUNNING'")
            except Exception:  # the store is being created
                continue
            if runs and max(_history(settings, runs[0].info.run_id, "loss") or [0]) >= step:
                for proc in psutil.Process().children(recursive=True):
                    with contextlib.suppress(psutil.Error):  # one that has just exited
                        if "RayTrainWorker" in " ".join(proc.cmdline()):
                            proc.send_signal(signal.SIGKILL)
                            killed.append(proc.pid)
                            return
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_training_reads_the_rows_in_one_seeded_permutation(dataset):
    manifest = read_manifest(str(dataset))

    def rows(seed):
        return [tuple(r["tokens"][:16]) for r in
                split_dataset(manifest, "train", shuffle_seed=seed).take_all()]

    in_build_order, shuffled = rows(None), rows(0)
    assert sorted(shuffled) == sorted(in_build_order)  # every row, once
    assert shuffled != in_build_order
    assert rows(0) == shuffled  # the same order at every execution: resumes read the same rows
    assert rows(1) != shuffled
    # the chat examples, packed after the text, are spread through the permutation
    chat = [i for i, r in enumerate(shuffled) if r in set(in_build_order[-3:])]
    assert chat and min(chat) < len(shuffled) - 3


@pytest.fixture(scope="module")
def pretrained(dataset, tmp_path_factory):
    """A 2-step pretrain checkpoint at 128 tokens (registered as `chain`)."""
    settings = Settings(home=tmp_path_factory.mktemp("pretrained"))
    yield train(_config(dataset, steps=2, checkpoint_every=2, eval_every=2,
                        registered_model="chain"), settings), settings
    mlflow.set_tracking_uri(None)


def test_a_killed_preference_stage_resumes_exactly_from_its_last_checkpoint(dataset, pretrained,
                                                                           settings, tmp_path):
    """The preference stage (DPO against its frozen reference) on pairs tokenized with the
    checkpoint's tokenizer; a worker killed past step 10 resumes and reproduces, bit for bit,
    the uninterrupted run: weights, optimizer, schedule, data position, random state, and the
    reference rebuilt from the same checkpoint. (The resume path is the worker loop's, the same
    for every stage.)"""
    pre, _ = pretrained
    lines = [json.dumps({"prompt": f"{a} plus {b} is", "chosen": f" {a + b}.",
                         "rejected": f" {a + b + 1}.", "format": "text", "source": "sums"})
             for a in range(8) for b in range(8)]  # short enough for rows of 128 bytes
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines))
    pairs = tmp_path / "pairs"
    build_dataset(parse_spec({
        "name": "train-pairs", "kind": "preference", "preset": "tiny",
        "sources": [{"name": "sums", "modality": "text", "reader": "preference-jsonl",
                     "location": str(tmp_path / "pairs.jsonl")}],
        "splits": {"validation_percent": 10, "test_percent": 0}, "packing": {"seq_len": 128},
        "filters": {"min_chars": 8}, "tokenizer": {"path": str(pre.checkpoint / "tokenizer.json")}}),
        str(pairs), str(tmp_path / "cache"))
    common = {"stage": "preference", "init_from": str(pre.checkpoint), "workers": 1,
              "steps": 20, "checkpoint_every": 10, "eval_every": 10, "max_failures": 2}
    reference = train(_config(pairs, **common, run_name="uninterrupted",
                              registered_model="pairs"), settings)
    killed = []
    watcher = _kill_a_worker_once_past(settings, 10, killed)
    resumed = train(_config(pairs, **common, run_name="killed", registered_model=None), settings)
    watcher.join(timeout=1)
    assert killed, "no worker was killed: the run ended before the watcher saw step 10"
    assert not psutil.pid_exists(killed[0])
    for key in ("loss", "reward_margin", "chosen_logp"):
        expected = _history(settings, reference.run_id, key)
        assert sorted(expected) == list(range(1, 21))
        assert _history(settings, resumed.run_id, key) == expected
    metrics = MlflowClient(settings.tracking_uri).get_run(reference.run_id).data.metrics
    assert {"reward_accuracy", "rejected_logp", "val_loss", "val_reward_accuracy"} <= set(metrics)
    version = MlflowClient(settings.tracking_uri).get_model_version(
        "pairs", str(reference.model_version))
    assert version.tags["longmix.stage"] == "preference"
    # the stage and the data go together
    with pytest.raises(TrainConfigError, match="only the preference stage trains on"):
        plan_stage(_config(pairs, stage="sft", init_from=str(pre.checkpoint)))
    with pytest.raises(TrainConfigError, match="trains on preference pairs"):
        plan_stage(_config(dataset, stage="preference", init_from=str(pre.checkpoint)))


def test_stages_chain_pretrain_long_context_then_sft_is_planned(dataset, pretrained, tmp_path):
    pre, settings = pretrained
    long_data = tmp_path / "long"
    build_dataset(_spec("train-long", 1024, synthetic={"retrieval": 6, "haystack_tokens": 600},
                        tokenizer={"path": str(pre.checkpoint / "tokenizer.json")}),
                  str(long_data), str(tmp_path / "cache"))
    long = train(_config(long_data, stage="long_context", init_from=str(pre.checkpoint), steps=2,
                         batch_size=1, checkpoint_every=2, eval_every=2, registered_model="chain"),
                 settings)
    config = json.loads((long.checkpoint / "config.json").read_text())
    assert (config["rope_scaling"], config["rope_factor"], config["max_seq_len"]) == ("yarn", 8.0, 1024)
    assert config["rope_original_max_seq_len"] == 128  # the context pretraining ran at
    # a preset names the architecture; the context the earlier stages set is not part of it
    plan_stage(_config(dataset, stage="sft", init_from=str(long.checkpoint), preset="tiny"))
    with pytest.raises(TrainConfigError, match="preset=small differs"):
        plan_stage(_config(dataset, stage="sft", init_from=str(long.checkpoint), preset="small"))
    client = MlflowClient(settings.tracking_uri)
    stages = [client.get_model_version("chain", str(r.model_version)).tags["longmix.stage"]
              for r in (pre, long)]
    assert stages == ["pretrain", "long_context"]  # sft trains in the tiny pipeline's tests
    with pytest.raises(TrainConfigError, match="different tokenizer"):
        other = tmp_path / "other"
        build_dataset(_spec("other", 128, tokenizer={"vocab_size": 280, "sample_bytes": 20000}),
                      str(other), str(tmp_path / "cache"))
        plan_stage(_config(other, stage="sft", init_from=str(pre.checkpoint)))


def test_bad_configurations_are_refused_before_any_worker(dataset, tmp_path):
    with pytest.raises(TrainConfigError, match="seq_len=256: the dataset packs rows of 128"):
        plan_stage(_config(dataset, seq_len=256))
    with pytest.raises(TrainConfigError, match="preset.*unknown preset 'huge'"):
        plan_stage(_config(dataset, preset="huge"))
    with pytest.raises(TrainConfigError, match="give init_from"):
        _config(dataset, stage="sft")
    with pytest.raises(TrainConfigError, match="fsdp.*needs use_gpu"):
        _config(dataset, fsdp=True)
    with pytest.raises(TrainConfigError, match="workers"):
        _config(dataset, workers=0)
    tampered = tmp_path / "tampered"
    shutil.copytree(dataset, tampered)
    shard = sorted((tampered / "train").glob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes() + b"x")
    with pytest.raises(TrainConfigError, match=f"dataset: .*{shard.name}"):
        plan_stage(_config(tampered))
    with pytest.raises(TrainConfigError, match="init_from: .*no digest.json"):
        plan_stage(_config(dataset, stage="sft", init_from=str(tmp_path)))
