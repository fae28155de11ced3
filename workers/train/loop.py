"""The training step, independent of where it runs: one process here, each Ray Train worker
at scale. Plain functions: optimizer and schedule, one optimisation step, validation loss."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from model.encoders import Media
from model.transformer import ModelOutput, next_token_loss

from workers.data.pack import PackedSequences
from workers.train.data import Batch

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    total_steps: int = 1000
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    grad_accum: int = 1  # micro-batches per optimizer step

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be in [0, total_steps]")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * lr at total_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.total_steps - cfg.warmup_steps))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms, biases and embeddings' position tables."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or "norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=False)


def masked_targets(batch: PackedSequences) -> torch.Tensor:
    """Targets (N, L): the next tokens, IGNORE where the loss mask says not to predict."""
    targets = batch.tokens[:, 1:]
    if batch.loss_mask is None:
        return targets
    return targets.masked_fill(~batch.loss_mask[:, 1:], IGNORE_INDEX)


@dataclass
class StepResult:
    loss: float  # the objective's loss (language-model cross-entropy), mean over micro-batches
    aux_loss: float
    z_loss: float
    grad_norm: float
    lr: float
    tokens: int
    tokens_per_expert: torch.Tensor  # (n_moe_layers, E)
    router_entropy: torch.Tensor  # (n_moe_layers,)
    stats: dict[str, float] = field(default_factory=dict)  # the objective's other figures, means


# An objective: (model, batch, device) -> (loss to minimise, the model's output, figures to
# report, tokens processed). Language modelling here; DPO in workers.train.preference.
Objective = Callable[[torch.nn.Module, Any, torch.device],
                     tuple[torch.Tensor, ModelOutput, dict[str, float], int]]


def language_modeling(model: torch.nn.Module, batch: Batch, device: torch.device):
    """Next-token cross-entropy over the loss mask, with document masking."""
    rows = batch.rows
    inputs = rows.tokens[:, :-1].to(device)
    out = model(inputs, on_device(batch.media, device), doc_ids=rows.doc_ids[:, :-1].to(device))
    lm = next_token_loss(out.logits, masked_targets(rows).to(device))
    return lm, out, {"loss": lm.item()}, inputs.numel()


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro_batches: list,
               step: int, cfg: OptimConfig, autocast_dtype: torch.dtype | None = None,
               objective: Objective = language_modeling) -> StepResult:
    """One optimizer step over `micro_batches` (gradient accumulation) of `objective`, plus the
    routers' load-balancing and z losses.

    `model` is a Transformer, or one wrapped by DDP / FSDP (its forward is the same).
    """
    model.train()
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    device = next(model.parameters()).device
    totals: dict[str, float] = {"aux": 0.0, "z": 0.0}
    counts, entropy, tokens = None, None, 0
    for batch in micro_batches:
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            objective_loss, out, stats, n = objective(model, batch, device)
        loss = (objective_loss + out.aux_loss + out.z_loss) / len(micro_batches)
        loss.backward()
        for name, value in {**stats, "aux": out.aux_loss.item(), "z": out.z_loss.item()}.items():
            totals[name] = totals.get(name, 0.0) + value / len(micro_batches)
        layer_counts = torch.stack([s.tokens_per_expert for s in out.routing]).cpu()
        layer_entropy = torch.stack([s.router_entropy for s in out.routing]).cpu() / len(micro_batches)
        counts = layer_counts if counts is None else counts + layer_counts
        entropy = layer_entropy if entropy is None else entropy + layer_entropy
        tokens += n
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss, aux, z = totals.pop("loss"), totals.pop("aux"), totals.pop("z")
    return StepResult(loss, aux, z, float(grad_norm), lr, tokens, counts, entropy, totals)


def on_device(media: Media, device: torch.device) -> Media:
    return Media(*([t.to(device) for t in media.of(kind)] for kind in ("image", "audio", "video")))


@torch.no_grad()
def validation_loss(model: torch.nn.Module, batches) -> tuple[float, int]:
    """Sum of next-token cross-entropy and the number of target tokens, over `batches`
    (so that workers can add theirs up before dividing)."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in batches:
        rows = batch.rows
        out = model(rows.tokens[:, :-1].to(device), on_device(batch.media, device),
                    doc_ids=rows.doc_ids[:, :-1].to(device))
        targets = masked_targets(rows).to(device)
        n = int((targets != IGNORE_INDEX).sum())
        total += next_token_loss(out.logits, targets).item() * n
        count += n
    return total, count
