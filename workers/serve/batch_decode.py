"""One decode step for many sequences at once: each keeps its own KV cache (model.attention.KVCache,
batch 1, sized to its prompt + max_tokens), and their next tokens share one forward pass."""

from __future__ import annotations

import torch

from model.attention import KVCache
from model.transformer import Transformer


class BatchedCaches:
    """The per-sequence caches seen by the attention layers as one padded batch.

    `update` writes each row's new key/value at that row's own position and returns every row's
    keys/values left-aligned and zero-padded to the longest; `mask` hides the padding.
    """

    def __init__(self, caches: list[KVCache]):
        self.caches = caches
        self.lengths = torch.tensor([c.length for c in caches])  # (B,) positions filled so far
        self.padded_len = int(self.lengths.max()) + 1  # after this step's token

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (B, Hkv, 1, Dh) -> all keys, values so far (B, Hkv, padded_len, Dh)."""
        B, Hkv, _, Dh = k.shape
        keys = k.new_zeros(B, Hkv, self.padded_len, Dh)
        values = v.new_zeros(B, Hkv, self.padded_len, Dh)
        for i, cache in enumerate(self.caches):
            seq_k, seq_v = cache.update(layer, k[i:i + 1], v[i:i + 1])  # (1, Hkv, len + 1, Dh)
            keys[i, :, :seq_k.shape[2]] = seq_k[0]
            values[i, :, :seq_v.shape[2]] = seq_v[0]
        return keys, values

    def mask(self) -> torch.Tensor:
        """(B, 1, 1, padded_len): True where a row has a real key (its past and this token)."""
        return (torch.arange(self.padded_len)[None, :] <= self.lengths[:, None])[:, None, None]

    def advance(self) -> None:
        for cache in self.caches:
            cache.advance(1)


@torch.no_grad()
def decode_step(model: Transformer, tokens: list[int], caches: list[KVCache]) -> torch.Tensor:
    """The last token of each sequence (B,) with its cache -> next-token logits (B, V), float32.

    The same blocks as Transformer.forward_embeddings, with per-row positions and a padding mask.
    """
    device = next(model.parameters()).device
    batch = BatchedCaches(caches)
    x = model.tok_emb(torch.tensor(tokens, device=device)[:, None])  # (B, 1, D)
    cos, sin = model.rope(batch.lengths.to(device)[:, None])  # (B, 1, 1, Dh)
    mask = batch.mask().to(device)
    for block in model.layers:
        x, _ = block(x, cos, sin, mask, batch)
    batch.advance()
    return model.lm_head(model.norm(x)).float()[:, -1]  # (B, V)
