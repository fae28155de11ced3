"""One decode step for many sequences at once: each keeps its own KV cache (model.attention.KVCache,
batch 1, sized to its prompt + max_tokens), and their next tokens share one forward pass. Prompts
that arrive together are prefilled together the same way."""

from __future__ import annotations

import torch

from model.attention import KVCache
from model.tokenizer import PAD_ID
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

    The same blocks as Transformer.forward_embeddings, with per-row positions and a padding mask
    (a single sequence goes through Transformer.forward_embeddings itself, as in generation).
    """
    device = next(model.parameters()).device
    x = model.tok_emb(torch.tensor(tokens, device=device)[:, None])  # (B, 1, D)
    if len(caches) == 1:  # one sequence: its own cache as it is, no padding, no mask
        return model.forward_embeddings(x, cache=caches[0]).logits[:, -1]  # (1, V)
    batch = BatchedCaches(caches)
    cos, sin = model.rope(batch.lengths.to(device)[:, None])  # (B, 1, 1, Dh)
    mask = batch.mask().to(device)
    for block in model.layers:
        x, _ = block(x, cos, sin, mask, batch)
    batch.advance()
    return model.lm_head(model.norm(x)).float()[:, -1]  # (B, V)


class PrefillCaches:
    """Empty per-sequence caches seen by the attention layers as one right-padded batch: `update`
    writes each row's real positions into its own cache and returns this pass's keys and values
    as they are (a prompt attends only to itself)."""

    def __init__(self, caches: list[KVCache], lengths: list[int]):
        self.caches, self.lengths = caches, lengths

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for i, (cache, n) in enumerate(zip(self.caches, self.lengths)):
            cache.keys[layer][:, :, :n] = k[i:i + 1, :, :n]
            cache.values[layer][:, :, :n] = v[i:i + 1, :, :n]
        return k, v


@torch.no_grad()
def prefill_batch(model: Transformer, prompts: list[list[int]], caches: list[KVCache]) -> torch.Tensor:
    """Text prompts (no media) in one forward pass into their own empty caches -> the logits of
    each prompt's last token (B, V), float32.

    The prompts are right-padded to the longest: with causal attention a prompt's tokens never see
    the padding after them, and each row's keys and values are kept up to its own length only.
    """
    device = next(model.parameters()).device
    lengths = [len(p) for p in prompts]
    ids = torch.full((len(prompts), max(lengths)), PAD_ID, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, :len(prompt)] = torch.tensor(prompt)
    ids = ids.to(device)
    x = model.tok_emb(ids)  # (B, T, D)
    positions = torch.arange(ids.shape[1], device=device).expand_as(ids)
    cos, sin = model.rope(positions)
    batch = PrefillCaches(caches, lengths)
    for block in model.layers:
        x, _ = block(x, cos, sin, None, batch)  # no mask: causal
    for cache, n in zip(caches, lengths):
        cache.advance(n)
    last = x[torch.arange(len(prompts), device=device), torch.tensor(lengths, device=device) - 1]
    return model.lm_head(model.norm(last)).float()  # (B, V)
