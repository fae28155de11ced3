"""Sparse mixture-of-experts feed-forward: float32 top-k router, SwiGLU experts run as grouped
matrix products over tokens sorted by expert (dropless), Switch load-balancing and z losses."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig


class SwiGLU(nn.Module):
    """Dense feed-forward: w2(silu(w1 x) * w3 x). Used for dense layers and the shared expert."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden, bias=False)  # gate
        self.w3 = nn.Linear(d_model, hidden, bias=False)  # up
        self.w2 = nn.Linear(hidden, d_model, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def grouped_matmul(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Rows of x (N, K) sorted by group; group g's rows [offsets[g-1], offsets[g]) times w[g] (K, M).

    One fused kernel (torch._grouped_mm, as torchtitan uses) instead of a loop over experts.
    """
    device = x.device.type
    # autocast does not cover this private op: apply its dtype by hand
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else w.dtype
    return torch._grouped_mm(x.to(dtype), w.to(dtype), offs=offsets)


@dataclass
class RoutingStats:
    """What one MoE layer did with a batch; tensors are detached except the two losses."""

    aux_loss: torch.Tensor  # () Switch load-balancing loss, already weighted by alpha
    z_loss: torch.Tensor  # () router z-loss, already weighted
    tokens_per_expert: torch.Tensor  # (E,) int64, top-k assignments per expert
    router_entropy: torch.Tensor  # () mean entropy of the router distribution, nats

    @property
    def max_over_mean_load(self) -> float:
        counts = self.tokens_per_expert.float()
        return float(counts.max() / counts.mean().clamp_min(1e-9))


class Router(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.top_k, self.n_experts = cfg.top_k, cfg.n_experts
        self.aux_loss_weight, self.z_loss_weight = cfg.aux_loss_weight, cfg.z_loss_weight
        self.weight = nn.Parameter(torch.empty(cfg.n_experts, cfg.d_model))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, RoutingStats]:
        """x (N, D) -> top-k expert ids (N, k), their renormalised weights (N, k), stats."""
        # float32 routing: softmax and logsumexp over bf16 logits flip top-k choices and blow up
        # z-loss, so autocast is switched off here
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.float(), self.weight.float())  # (N, E)
        probs = logits.softmax(dim=-1)  # (N, E)
        top_p, top_idx = probs.topk(self.top_k, dim=-1)  # (N, k)
        top_w = top_p / top_p.sum(dim=-1, keepdim=True)

        counts = torch.bincount(top_idx.flatten(), minlength=self.n_experts)  # (E,)
        # Switch: alpha * E * sum_i f_i * P_i, f_i = share of assignments, P_i = mean router prob
        f = counts.float() / top_idx.numel()
        aux = self.aux_loss_weight * self.n_experts * (f * probs.mean(dim=0)).sum()
        z = self.z_loss_weight * torch.logsumexp(logits, dim=-1).square().mean()
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
        stats = RoutingStats(aux, z, counts.detach(), entropy.detach())
        return top_idx, top_w, stats


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.top_k = cfg.top_k
        self.router = Router(cfg)
        E, D, H = cfg.n_experts, cfg.d_model, cfg.expert_hidden
        self.w_gate_up = nn.Parameter(torch.empty(E, D, 2 * H))  # gate and up, fused: one product
        self.w_down = nn.Parameter(torch.empty(E, H, D))
        self.shared = SwiGLU(D, H) if cfg.n_shared_experts else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RoutingStats]:
        B, T, D = x.shape
        flat = x.reshape(-1, D)  # (N, D)
        top_idx, top_w, stats = self.router(flat)  # (N, k), (N, k)

        # dropless dispatch: sort the N*k assignments by expert, run each expert on its slice
        expert_of = top_idx.flatten()  # (N*k,)
        order = expert_of.argsort(stable=True)  # (N*k,)
        token_of = order // self.top_k  # source token of each sorted assignment
        offsets = stats.tokens_per_expert.cumsum(0).to(torch.int32)  # (E,)
        xs = flat[token_of]  # (N*k, D)
        gate, up = grouped_matmul(xs, self.w_gate_up, offsets).chunk(2, dim=-1)  # (N*k, H) each
        ys = grouped_matmul(F.silu(gate) * up, self.w_down, offsets)  # (N*k, D)
        ys = ys * top_w.flatten()[order, None].to(ys.dtype)

        out = torch.zeros_like(flat, dtype=ys.dtype).index_add_(0, token_of, ys)  # (N, D)
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.view(B, T, D).to(x.dtype), stats
