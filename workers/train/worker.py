"""What each Ray Train worker runs: build or restore the model and optimizer, stream its share
of the shards, step, evaluate, checkpoint (rank 0) and report. Restarted workers resume from
the last reported checkpoint: weights, optimizer, schedule position, data position and RNGs."""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.tokenizer import Tokenizer
from model.transformer import Transformer
from workers.train.config import TrainConfig, warmup_steps
from workers.train.data import collate
from workers.train.flops import measure_matmul_peak, training_flops_per_token
from workers.train.loop import (OptimConfig, language_modeling, make_optimizer, train_step,
                                validation_loss)
from workers.train.preference import collate_pairs, dpo_objective, preference_validation
from workers.train.state import TrainingState, restore_training_state, training_state_files


def optim_config(cfg: TrainConfig) -> OptimConfig:
    return OptimConfig(lr=cfg.lr, min_lr_ratio=cfg.min_lr_ratio, warmup_steps=warmup_steps(cfg),
                       total_steps=cfg.steps, weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
                       grad_accum=cfg.grad_accum)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    return torch.bfloat16 if bf16 else None


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def collator(stage: str):
    """Ray Data's numpy batches -> the stage's batches: packed rows, or preference pairs."""
    if stage == "preference":
        return collate_pairs
    return functools.partial(collate, sft=stage == "sft")


def batches(shard, cfg: TrainConfig, epoch: int, skip: int):
    """This worker's batches of one epoch, shuffled locally by a seed of the epoch; skips the
    first `skip` (already trained on before a restart)."""
    it = shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy", drop_last=True,
                            local_shuffle_buffer_size=4 * cfg.batch_size,
                            local_shuffle_seed=cfg.seed * 1000 + epoch)
    to_batch = collator(cfg.stage)
    for i, columns in enumerate(it):
        if i >= skip:
            yield to_batch(columns)


def frozen_reference(previous: Transformer, device: torch.device) -> Transformer:
    """DPO's reference: the checkpoint the policy starts from, as loaded (a model of its own, the
    policy holding a copy of its weights), never trained."""
    reference = previous.to(device).eval()
    reference.requires_grad_(False)
    return reference


def train_worker(config: dict) -> None:
    import ray.train
    from ray.train import Checkpoint

    from workers.train.tracking import MetricsLogger, moe_layer_names, step_metrics

    cfg = TrainConfig.model_validate(config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank

    model_cfg = ModelConfig.from_dict(config["model"])
    model = Transformer(model_cfg)
    tokenizer = Tokenizer.from_str(config["tokenizer"])
    objective, reference = language_modeling, None
    if cfg.init_from:  # the previous stage's weights; RoPE scaling changes no tensor
        previous, _ = load_checkpoint(cfg.init_from)
        model.load_state_dict(previous.state_dict())
        if cfg.stage == "preference":
            reference = None if cfg.reference_free else frozen_reference(previous, device)
            objective = dpo_objective(reference, cfg.beta, cfg.chosen_nll_weight)
    model.to(device)
    optimizer = make_optimizer(model, optim_config(cfg))
    state = TrainingState(step=0, epoch=0, batches_done_in_epoch=0, tokens_seen=0, seed=cfg.seed,
                          extra={"stage": cfg.stage, "seq_len": config["seq_len"]})
    resume = ray.train.get_checkpoint()
    if resume:
        with resume.as_directory() as folder:
            restored, _ = load_checkpoint(Path(folder) / "checkpoint")
            model.load_state_dict(restored.state_dict())
            state = restore_training_state(Path(folder) / "checkpoint", optimizer)
    expert_counts = torch.tensor(state.extra.get("expert_counts", []), dtype=torch.float64)

    ddp = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={
        # encoders of a modality absent from a batch get no gradient: tell DDP to expect that
        "find_unused_parameters": True})
    logger = MetricsLogger(config["tracking_uri"], config["run_id"]) if rank == 0 else None
    system = system_metrics(config, resumed=state.step > 0) if rank == 0 else None
    flops_per_token = training_flops_per_token(model_cfg, config["seq_len"])
    peak = config.get("peak_flops") or measure_matmul_peak(torch.float32, seconds=0.5)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("validation")
    dtype, optim = autocast_dtype(cfg, device), optim_config(cfg)

    while state.step < cfg.steps:
        stream = batches(train_shard, cfg, state.epoch, state.batches_done_in_epoch)
        exhausted, first_step = False, state.step
        while state.step < cfg.steps and not exhausted:
            micro = [b for _, b in zip(range(cfg.grad_accum), stream)]  # range first: zip
            # would otherwise pull (and lose) one batch too many
            exhausted = len(micro) < cfg.grad_accum
            # every rank must agree to step, or DDP's collectives would hang on the others
            ready = all_reduce_sum(torch.tensor([0.0 if exhausted else 1.0]))
            if ready.item() < world:
                break
            started = time.perf_counter()
            result = train_step(ddp, optimizer, micro, state.step, optim, dtype, objective)
            seconds = time.perf_counter() - started
            totals = all_reduce_sum(torch.tensor([result.loss, result.tokens, *result.stats.values()],
                                                 dtype=torch.float64))
            counts = all_reduce_sum(result.tokens_per_expert.to(torch.float64))
            expert_counts = counts if expert_counts.numel() == 0 else expert_counts + counts
            state.step += 1
            state.batches_done_in_epoch += cfg.grad_accum
            state.tokens_seen += int(totals[1])
            tokens_per_s = totals[1].item() / seconds
            everyone = dataclasses.replace(  # all workers' view
                result, loss=totals[0].item() / world, tokens_per_expert=counts,
                stats={k: v.item() / world for k, v in zip(result.stats, totals[2:])})
            metrics = step_metrics(everyone, moe_layer_names(model_cfg.n_layers, model_cfg.n_dense_layers),
                                   tokens_per_s=tokens_per_s,
                                   utilisation=tokens_per_s * flops_per_token / (peak * world))
            if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
                metrics.update(validation(ddp, reference, val_shard, cfg))
            if logger:
                logger.log_step(state.step, metrics)
            if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
                state.extra["expert_counts"] = expert_counts.tolist()
                report = {"step": state.step, **{k: v for k, v in metrics.items() if "/" not in k}}
                if rank == 0:
                    # report copies the folder into the run's storage; the local copy then goes
                    with tempfile.TemporaryDirectory(prefix="longmix-ckpt-") as folder:
                        save_checkpoint(Path(folder) / "checkpoint", model, tokenizer,
                                        extra_files=training_state_files(state, optimizer))
                        if logger:
                            logger.flush()
                        ray.train.report(report, checkpoint=Checkpoint.from_directory(folder))
                else:
                    ray.train.report(report)
        if state.step == first_step and state.batches_done_in_epoch == 0:
            raise RuntimeError(f"the {cfg.stage} training data gives a worker no full step of "
                               f"{cfg.grad_accum} x {cfg.batch_size} rows: lower batch_size or "
                               "workers, or build a larger dataset")
        if state.step < cfg.steps:
            state.epoch += 1
            state.batches_done_in_epoch = 0
    if logger:
        logger.close()
        system.finish()


def system_metrics(config: dict, resumed: bool):
    """MLflow's system metrics (CPU, memory, disk, network; GPU where there is one) of rank 0's
    node, sampled in a background thread into the stage's run."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(config["run_id"], sampling_interval=2, resume_logging=resumed,
                                   tracking_uri=config["tracking_uri"])
    monitor.start()
    return monitor


def validation(model, reference, shard, cfg: TrainConfig) -> dict[str, float]:
    """Validation figures over eval_batches per worker, combined across workers: the loss (none
    when the split has nothing to predict, e.g. no chat rows for sft) and, for preference, the
    share of held-out pairs whose implicit reward prefers the chosen response."""
    it = shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy")
    to_batch = collator(cfg.stage)
    picked = (to_batch(columns) for _, columns in zip(range(cfg.eval_batches), it))
    if cfg.stage == "preference":
        sums = all_reduce_sum(torch.tensor(
            preference_validation(model, reference, picked, cfg.beta), dtype=torch.float64))
        model.train()
        return {"val_loss": (sums[0] / sums[2]).item(),
                "val_reward_accuracy": (sums[1] / sums[2]).item()} if sums[2] > 0 else {}
    total, count = validation_loss(model, picked)
    sums = all_reduce_sum(torch.tensor([total, count], dtype=torch.float64))
    model.train()
    return {"val_loss": (sums[0] / sums[1]).item()} if sums[1] > 0 else {}
