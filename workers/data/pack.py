"""Packing: tokenized documents -> fixed-length training rows with document ids (so attention
stays within each document), a loss mask, and the media whose placeholders the row holds.

Text documents may continue from one row into the next. A document with media never splits:
the encoder needs the whole item, so such a document starts a new row when the current one
cannot hold it (the rest of the row is padding).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from model.tokenizer import EOS_ID, PAD_ID, PLACEHOLDER_IDS, SPECIAL_IDS
from workers.data.records import MediaItem

ASSISTANT_ID = SPECIAL_IDS["<|assistant|>"]
ROLE_IDS = np.array([SPECIAL_IDS[t] for t in ("<|system|>", "<|user|>", "<|assistant|>")])
NOT_PREDICTED = np.array(sorted({PAD_ID, *PLACEHOLDER_IDS.values()}))

# One Parquet row per packed sequence of seq_len + 1 tokens (inputs [:-1], targets [1:]).
PACKED_SCHEMA = pa.schema([
    ("tokens", pa.list_(pa.int32())),
    ("doc_ids", pa.list_(pa.int32())),  # -1 on padding
    ("loss_mask", pa.list_(pa.int8())),  # 1 where the token is a prediction target
    ("media_kinds", pa.list_(pa.string())),
    ("media_shapes", pa.list_(pa.list_(pa.int32()))),
    ("media_bytes", pa.list_(pa.binary())),
])


@dataclass
class TokenizedDoc:
    ids: np.ndarray  # (n,) int32, ends with <|eos|>
    loss_mask: np.ndarray  # (n,) int8
    media: list[MediaItem] = field(default_factory=list)


def loss_mask_for(ids: np.ndarray, chat: bool) -> np.ndarray:
    """1 where a token is worth predicting: not padding or media placeholders; in chat documents
    only the assistant's turns (its tokens and the <|end|> closing each turn)."""
    mask = ~np.isin(ids, NOT_PREDICTED)
    if chat:
        # a token belongs to the turn of the latest role marker at or before it
        is_role = np.isin(ids, ROLE_IDS)
        latest_role = np.maximum.accumulate(np.where(is_role, np.arange(len(ids)), -1))
        in_assistant_turn = (latest_role >= 0) & (ids[np.maximum(latest_role, 0)] == ASSISTANT_ID)
        mask &= in_assistant_turn & ~is_role
    return mask.astype(np.int8)


class Packer:
    """Accumulates tokenized documents into rows of `width` = seq_len + 1 tokens."""

    def __init__(self, seq_len: int):
        self.width = seq_len + 1
        self.rows: list[dict] = []
        self._reset()

    def _reset(self) -> None:
        self._ids, self._docs, self._mask, self._media = [], [], [], []
        self._fill, self._next_doc = 0, 0

    def add(self, doc: TokenizedDoc) -> None:
        n = len(doc.ids)
        if doc.media:
            if n > self.width:
                raise ValueError(f"a document with media needs {n} tokens; rows hold {self.width}")
            if self._fill + n > self.width:
                self.flush()
            self._append(doc.ids, doc.loss_mask, doc.media)
            return
        start = 0
        while start < n:
            take = min(n - start, self.width - self._fill)
            self._append(doc.ids[start:start + take], doc.loss_mask[start:start + take], [])
            start += take
            if self._fill == self.width:
                self.flush()

    def _append(self, ids, mask, media) -> None:
        self._ids.append(ids)
        self._mask.append(mask)
        self._docs.append(np.full(len(ids), self._next_doc, dtype=np.int32))
        self._media += media
        self._fill += len(ids)
        self._next_doc += 1

    def flush(self) -> None:
        """Close the current row, padding it to full width."""
        if self._fill == 0:
            return
        pad = self.width - self._fill
        self.rows.append({
            "tokens": np.concatenate([*self._ids, np.full(pad, PAD_ID, dtype=np.int32)]),
            "doc_ids": np.concatenate([*self._docs, np.full(pad, -1, dtype=np.int32)]),
            "loss_mask": np.concatenate([*self._mask, np.zeros(pad, dtype=np.int8)]),
            "media_kinds": [m.kind for m in self._media],
            "media_shapes": [list(m.array.shape) for m in self._media],
            "media_bytes": [m.array.tobytes() for m in self._media],
        })
        self._reset()

    def table(self) -> pa.Table:
        cols = {name: [row[name] for row in self.rows] for name in PACKED_SCHEMA.names}
        return pa.Table.from_pydict(cols, schema=PACKED_SCHEMA)


@dataclass
class PackedSequences:
    """Packed rows as tensors, for the training step."""

    tokens: torch.Tensor  # (N, L + 1) int64: inputs are [:, :-1], targets [:, 1:]
    doc_ids: torch.Tensor  # (N, L + 1) int64
    loss_mask: torch.Tensor | None = None  # (N, L + 1) bool: targets that count; None = all

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def rows(self, index: torch.Tensor) -> "PackedSequences":
        mask = None if self.loss_mask is None else self.loss_mask[index]
        return PackedSequences(self.tokens[index], self.doc_ids[index], mask)

    @classmethod
    def from_table(cls, table: pa.Table) -> "PackedSequences":
        def column(name, dtype):
            return torch.from_numpy(np.stack(table.column(name).to_numpy(zero_copy_only=False))
                                    .astype(dtype))
        return cls(column("tokens", np.int64), column("doc_ids", np.int64),
                   column("loss_mask", np.bool_))


def pack_documents(documents: Iterable[list[int]], seq_len: int) -> PackedSequences:
    """Plain text token lists -> packed rows (each document closed by <|eos|>)."""
    packer = Packer(seq_len)
    for ids in documents:
        arr = np.array([*ids, EOS_ID], dtype=np.int32)
        packer.add(TokenizedDoc(arr, loss_mask_for(arr, chat=False)))
    packer.flush()
    if not packer.rows:
        raise ValueError(f"no tokens to pack into sequences of {seq_len + 1}")
    return PackedSequences.from_table(packer.table())
