"""One decode step for many sequences at once, their next tokens sharing one forward pass: over
per-sequence KV caches (model.attention.KVCache, `decode_step`, padded to the longest each step),
or over the engine's BatchKV (`decode_rows`: a row per running sequence, written in place). Prompts
that arrive together are prefilled together (`prefill_batch`)."""

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

    def update(self, layer: int, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for i, (cache, n) in enumerate(zip(self.caches, self.lengths)):
            cache.keys[layer][:, :, :n] = k[i:i + 1, :, :n]
            cache.values[layer][:, :, :n] = v[i:i + 1, :, :n]
        return k, v


@torch.no_grad()
def prefill_batch(model: Transformer, prompts: list[list[int]],
                  caches: list[KVCache]) -> torch.Tensor:
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


class BatchKV:
    """The running batch's keys and values in one tensor per layer, a row per sequence in the
    engine's running order: a decode step writes each row's new key/value at its own position and
    attends over a view, with no per-step copy of anyone's past. A sequence's prefilled cache is
    copied in once when it joins; rows are compacted (in order) when sequences leave; the length
    dimension grows by doubling, so memory follows the longest running sequence."""

    def __init__(self, model: Transformer):
        weight = next(model.parameters())
        self.cfg, self.dtype, self.device = model.cfg, weight.dtype, weight.device
        self.keys: list[torch.Tensor] = []  # per layer (rows, Hkv, capacity, Dh)
        self.values: list[torch.Tensor] = []
        self.lengths: list[int] = []  # positions filled, per row in use
        self.rows, self.capacity = 0, 0  # allocated

    def __len__(self) -> int:
        return len(self.lengths)

    def _ensure(self, rows: int, length: int) -> None:
        if rows <= self.rows and length <= self.capacity:
            return
        new_rows = max(rows, self.rows)
        new_capacity = max(self.capacity, 64)
        while new_capacity < length:
            new_capacity *= 2
        shape = (new_rows, self.cfg.n_kv_heads, new_capacity, self.cfg.head_dim)
        n, old = len(self.lengths), self.capacity
        for tensors in (self.keys, self.values):
            grown = [torch.zeros(shape, dtype=self.dtype, device=self.device)
                     for _ in range(self.cfg.n_layers)]
            for layer, previous in enumerate(tensors):
                grown[layer][:n, :, :old] = previous[:n]
            tensors[:] = grown
        self.rows, self.capacity = new_rows, new_capacity

    def keep(self, rows: list[int]) -> None:
        """Keep these rows (increasing), moved up to 0..len(rows)-1 in this order."""
        if rows != list(range(len(rows))):
            index = torch.tensor(rows, device=self.device)
            span = max((self.lengths[r] for r in rows), default=0)
            for tensors in (self.keys, self.values):
                for layer in range(self.cfg.n_layers):
                    tensors[layer][:len(rows), :, :span] = tensors[layer][index, :, :span]
        self.lengths = [self.lengths[r] for r in rows]

    def add(self, cache: KVCache) -> None:
        """A prefilled sequence joins as the last row."""
        row, n = len(self.lengths), cache.length
        self._ensure(row + 1, n + 1)
        for layer in range(self.cfg.n_layers):
            self.keys[layer][row, :, :n] = cache.keys[layer][0, :, :n]
            self.values[layer][row, :, :n] = cache.values[layer][0, :, :n]
        self.lengths.append(n)

    # the attention layers' cache interface, for one decode step of every row

    def begin_step(self) -> None:
        self._ensure(len(self.lengths), max(self.lengths) + 1)
        self._lengths = torch.tensor(self.lengths, device=self.device)  # (B,)
        self._rows = torch.arange(len(self.lengths), device=self.device)
        self.padded_len = max(self.lengths) + 1  # after this step's token

    def update(self, layer: int, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (B, Hkv, 1, Dh) -> all keys, values so far (B, Hkv, padded_len, Dh) (views)."""
        B, end = k.shape[0], self.padded_len
        self.keys[layer][self._rows, :, self._lengths] = k[:, :, 0]
        self.values[layer][self._rows, :, self._lengths] = v[:, :, 0]
        return self.keys[layer][:B, :, :end], self.values[layer][:B, :, :end]

    def mask(self) -> torch.Tensor | None:
        """(B, 1, 1, padded_len): True where a row has a real key; None for a single row."""
        if len(self.lengths) == 1:
            return None
        positions = torch.arange(self.padded_len, device=self.device)
        return (positions[None, :] <= self._lengths[:, None])[:, None, None]

    def advance(self) -> None:
        self.lengths = [n + 1 for n in self.lengths]


@torch.no_grad()
def decode_rows(model: Transformer, tokens: list[int], kv: BatchKV) -> torch.Tensor:
    """decode_step over a BatchKV: token i is row i's last token -> next-token logits (B, V)."""
    device = next(model.parameters()).device
    kv.begin_step()
    x = model.tok_emb(torch.tensor(tokens, device=device)[:, None])  # (B, 1, D)
    cos, sin = model.rope(kv._lengths[:, None])  # (B, 1, 1, Dh)
    mask = kv.mask()
    for block in model.layers:
        x, _ = block(x, cos, sin, mask, kv)
    kv.advance()
    return model.lm_head(model.norm(x)).float()[:, -1]  # (B, V)
