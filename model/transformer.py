"""The decoder-only sparse-MoE transformer: multimodal input embedding, blocks, LM head."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.attention import Attention, KVCache, attention_mask
from model.config import ModelConfig
from model.encoders import MODALITIES, Media, MediaEncoders, MediaError
from model.moe import MoE, RoutingStats, SwiGLU
from model.rope import RotaryEmbedding
from model.tokenizer import PLACEHOLDER_IDS


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer_idx)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.is_moe = layer_idx >= cfg.n_dense_layers
        self.ffn = MoE(cfg) if self.is_moe else SwiGLU(cfg.d_model, cfg.dense_hidden)

    def forward(self, x, cos, sin, mask, cache) -> tuple[torch.Tensor, RoutingStats | None]:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache)
        if self.is_moe:
            h, stats = self.ffn(self.ffn_norm(x))
            return x + h, stats
        return x + self.ffn(self.ffn_norm(x)), None


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, T, V), float32
    aux_loss: torch.Tensor  # () load-balancing loss summed over MoE layers (weighted)
    z_loss: torch.Tensor  # () router z-loss summed over MoE layers (weighted)
    routing: list[RoutingStats]  # one per MoE layer


def positions_in_document(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) document ids -> (B, T) position of each token within its own document."""
    idx = torch.arange(doc_ids.shape[1], device=doc_ids.device).expand_as(doc_ids)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return idx - torch.cummax(idx * starts, dim=1).values


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoders = MediaEncoders(cfg)
        self.rope = RotaryEmbedding(cfg)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        residual_std = std / math.sqrt(2 * self.cfg.n_layers)  # GPT-2: outputs into the residual
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            elif name.endswith(("wo.weight", "w2.weight", "w_down")):
                p.normal_(0.0, residual_std)
            else:
                p.normal_(0.0, std)

    def embed(self, ids: torch.Tensor, media: Media | None = None) -> torch.Tensor:
        """Token ids (B, T) -> embeddings (B, T, D), placeholders replaced by encoded media."""
        x = self.tok_emb(ids)  # (B, T, D)
        media = media or Media()
        for kind in MODALITIES:
            slots = ids == PLACEHOLDER_IDS[kind]  # (B, T)
            n_slots, items = int(slots.sum()), media.of(kind)
            if not n_slots and not items:
                continue
            encoded = self.encoders.encode(kind, items)  # (n, D)
            if encoded.shape[0] != n_slots:
                raise MediaError(f"the input has {n_slots} <|{kind}|> placeholder tokens but the "
                                 f"{len(items)} {kind} item(s) supplied encode to {encoded.shape[0]}")
            x = x.masked_scatter(slots[..., None], encoded.to(x.dtype))
        return x

    def forward(self, ids: torch.Tensor, media: Media | None = None,
                doc_ids: torch.Tensor | None = None, cache: KVCache | None = None) -> ModelOutput:
        """ids (B, T); doc_ids (B, T) confines attention (and positions) to each packed document."""
        return self.forward_embeddings(self.embed(ids, media), doc_ids, cache)

    def forward_embeddings(self, x: torch.Tensor, doc_ids: torch.Tensor | None = None,
                           cache: KVCache | None = None) -> ModelOutput:
        B, T, _ = x.shape
        past = cache.length if cache is not None else 0
        if past + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {past + T} tokens exceeds max_seq_len={self.cfg.max_seq_len}")
        if doc_ids is not None:
            positions = positions_in_document(doc_ids)
        else:
            positions = torch.arange(past, past + T, device=x.device).expand(B, T)
        cos, sin = self.rope(positions)  # (B, 1, T, Dh)
        mask = attention_mask(doc_ids, T, past, x.device)

        routing: list[RoutingStats] = []
        for block in self.layers:
            x, stats = block(x, cos, sin, mask, cache)
            if stats is not None:
                routing.append(stats)
        if cache is not None:
            cache.advance(T)
        logits = self.lm_head(self.norm(x)).float()  # (B, T, V)
        zero = logits.new_zeros(())
        return ModelOutput(logits=logits,
                           aux_loss=sum((s.aux_loss for s in routing), zero),
                           z_loss=sum((s.z_loss for s in routing), zero),
                           routing=routing)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of logits (B, T, V) against targets (B, T); ignore_index masks."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index)
