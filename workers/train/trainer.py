"""The training step of the pipeline: one stage on Ray Train (TorchTrainer, DDP with gloo on
CPU and NCCL on GPU), tracked in MLflow, its final checkpoint logged and registered."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infra.settings import Settings, get_settings
from infra.storage import is_s3, read_bytes, resolve
from model.checkpoint import checkpoint_digest
from workers.data.manifest import TOKENIZER_NAME, dataset_root
from workers.train.config import TrainConfig, plan_stage
from workers.train.data import split_dataset
from workers.train.state import read_training_state
from workers.train.worker import train_worker


@dataclass
class TrainResult:
    checkpoint: Path  # the final checkpoint, local and verified
    digest: str  # its longmix.digest
    run_id: str
    model_uri: str | None
    model_version: str | None
    metrics: dict


def scaling_config(cfg: TrainConfig):
    from ray.train import ScalingConfig

    resources = {"CPU": cfg.cpus_per_worker, **cfg.resources_per_worker}
    if cfg.use_gpu:
        resources.setdefault("GPU", 1)
    return ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu, resources_per_worker=resources)


def run_config(cfg: TrainConfig, settings: Settings, name: str):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    storage = cfg.storage_path or str((settings.home / "train").resolve())
    fs, path = resolve(storage)
    return RunConfig(name=name, storage_path=path, storage_filesystem=fs if is_s3(storage) else None,
                     checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                     failure_config=FailureConfig(max_failures=cfg.max_failures))


def local_checkpoint(checkpoint, downloads: Path) -> tuple[Path, str]:
    """The reported checkpoint as a verified local folder and its digest: where Ray Train keeps
    it on a local disk; downloaded into `downloads`/<its name> from S3."""
    import shutil

    import pyarrow.fs

    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        target = Path(checkpoint.path) / "checkpoint"
    else:
        target = downloads / Path(checkpoint.path).name / "checkpoint"
        shutil.rmtree(target, ignore_errors=True)
        with checkpoint.as_directory() as folder:
            shutil.copytree(Path(folder) / "checkpoint", target)
    return target, checkpoint_digest(target)  # every file verified on the way


TRAIN_KEY_TAG = "longmix.train_key"


def unfinished_run(key: str) -> str | None:
    """The MLflow run of an earlier attempt with the same inputs that never finished (killed)."""
    import mlflow

    runs = mlflow.search_runs(filter_string=f"tags.`{TRAIN_KEY_TAG}` = '{key}'",
                              order_by=["attributes.start_time DESC"], max_results=1,
                              output_format="list")
    return runs[0].info.run_id if runs and runs[0].info.status != "FINISHED" else None


def train(cfg: TrainConfig, settings: Settings | None = None, *, key: str | None = None) -> TrainResult:
    """Run one stage; refused before any worker starts if the config, dataset or checkpoint is bad.

    `key` names the stage's inputs (a digest): a second call with the same key after a killed
    attempt continues that attempt's MLflow run and Ray Train run from its last checkpoint."""
    import mlflow
    from ray.train import DataConfig
    from ray.train.torch import TorchTrainer

    from infra.ray_runtime import ensure_ray
    from infra.registry import log_checkpoint_model
    from infra.tracking import configure_mlflow
    from workers.train.tracking import expert_load_heatmap, loss_curve_figure

    settings = settings or get_settings()
    plan = plan_stage(cfg)  # raises TrainConfigError with the field named
    manifest = plan.manifest
    tokenizer = read_bytes(f"{dataset_root(manifest)}/{TOKENIZER_NAME}").decode()
    ensure_ray(settings)
    configure_mlflow(settings)
    parent = mlflow.active_run()
    name = cfg.run_name or f"{cfg.stage}-{manifest['name']}"
    resumed = unfinished_run(key) if key else None
    with mlflow.start_run(run_id=resumed, run_name=None if resumed else name,
                          nested=parent is not None) as run:
        if key:
            mlflow.set_tag(TRAIN_KEY_TAG, key)
        mlflow.log_params({**{k: v for k, v in cfg.model_dump().items() if v is not None},
                           "dataset_digest": manifest["digest"], "seq_len": plan.seq_len,
                           **{f"model.{k}": v for k, v in plan.model.items()}})
        mlflow.set_tags({"longmix.stage": cfg.stage, "longmix.dataset_digest": manifest["digest"]})
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={"train": cfg.model_dump(), "model": plan.model, "seq_len": plan.seq_len,
                               "tokenizer": tokenizer, "tracking_uri": settings.tracking_uri,
                               "run_id": run.info.run_id},
            scaling_config=scaling_config(cfg),
            # one Ray Train run per inputs when keyed: fit() again continues its last checkpoint
            run_config=run_config(cfg, settings, f"{name}-{key[:16] if key else run.info.run_id[:8]}"),
            datasets={"train": split_dataset(manifest, "train", sft=cfg.stage == "sft",
                                             shuffle_seed=cfg.seed if cfg.shuffle else None),
                      "validation": split_dataset(manifest, "validation", sft=cfg.stage == "sft")},
            dataset_config=DataConfig(datasets_to_split="all"),
        )
        result = trainer.fit()
        checkpoint, digest = local_checkpoint(result.checkpoint,
                                              settings.home / "checkpoints" / run.info.run_id)
        counts = read_training_state(checkpoint).extra["expert_counts"]  # (layers, experts)
        mlflow.log_figure(expert_load_heatmap(np.array(counts), f"{cfg.stage}: tokens per expert"),
                          "training/expert_load.png")
        history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
        val = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_loss")
        mlflow.log_figure(loss_curve_figure([m.step for m in history], [m.value for m in history],
                                            [m.step for m in val], [m.value for m in val]),
                          "training/loss_curve.png")
        model_uri = version = None
        if cfg.registered_model:
            ref = log_checkpoint_model(checkpoint, run.info.run_id, registered_name=cfg.registered_model,
                                       tags={"longmix.stage": cfg.stage,
                                             "longmix.dataset_digest": manifest["digest"],
                                             **({TRAIN_KEY_TAG: key} if key else {})})
            model_uri, version = ref.model_uri, ref.version
        return TrainResult(checkpoint, digest, run.info.run_id, model_uri, version,
                           dict(result.metrics or {}))

