"""Packing: tokenized documents -> fixed-length training rows with document ids (so attention
stays within each document), a loss mask, and the media whose placeholders the row holds.

A document that fits in a row is never split across rows (best-fit packing, `Packer`); a text
document longer than a row fills whole rows, then its tail is packed. A document with media must
fit in a row: the encoder needs the whole item.
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


class _Row:
    """One packed row being filled: its documents' tokens, loss masks and media."""

    def __init__(self):
        self.ids, self.docs, self.mask, self.media = [], [], [], []
        self.fill = 0

    def append(self, ids, mask, media) -> None:
        self.ids.append(ids)
        self.mask.append(mask)
        self.docs.append(np.full(len(ids), len(self.docs), dtype=np.int32))
        self.media += media
        self.fill += len(ids)

    def close(self, width: int) -> dict:
        """The row padded to `width`, as PACKED_SCHEMA holds it."""
        pad = width - self.fill
        return {
            "tokens": np.concatenate([*self.ids, np.full(pad, PAD_ID, dtype=np.int32)]),
            "doc_ids": np.concatenate([*self.docs, np.full(pad, -1, dtype=np.int32)]),
            "loss_mask": np.concatenate([*self.mask, np.zeros(pad, dtype=np.int8)]),
            "media_kinds": [m.kind for m in self.media],
            "media_shapes": [list(m.array.shape) for m in self.media],
            "media_bytes": [m.array.tobytes() for m in self.media],
        }


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
    """Accumulates tokenized documents into rows of `width` = seq_len + 1 tokens, by best fit
    (Ding et al. 2024, "Fewer Truncations Improve Language Modeling"): a document that fits in a
    row is never split; one longer than a row fills whole rows and its tail is placed like a short
    document. A split lookup is worse than none: a question cut from its facts (they are another
    document to the attention mask) teaches the model to answer with a guess. Up to `open_rows`
    rows are filled at once; a document goes to the open row with the least room that holds it,
    and when none does and all are open, the fullest row is closed."""

    def __init__(self, seq_len: int, open_rows: int = 64):
        self.width = seq_len + 1
        self.open_rows = open_rows
        self.rows: list[dict] = []
        self._open: list[_Row] = []

    def add(self, doc: TokenizedDoc) -> None:
        n = len(doc.ids)
        if doc.media and n > self.width:
            raise ValueError(f"a document with media needs {n} tokens; rows hold {self.width}")
        start = 0
        while n - start > self.width:  # text longer than a row: whole rows first
            row = _Row()
            row.append(doc.ids[start:start + self.width], doc.loss_mask[start:start + self.width],
                       [])
            self.rows.append(row.close(self.width))
            start += self.width
        self._place(doc.ids[start:], doc.loss_mask[start:], doc.media)

    def _place(self, ids, mask, media) -> None:
        fits = [r for r in self._open if r.fill + len(ids) <= self.width]
        if fits:
            row = max(fits, key=lambda r: r.fill)
        else:
            if len(self._open) == self.open_rows:
                fullest = max(self._open, key=lambda r: r.fill)
                self._open.remove(fullest)
                self.rows.append(fullest.close(self.width))
            row = _Row()
            self._open.append(row)
        row.append(ids, mask, media)
        if row.fill == self.width:
            self._open.remove(row)
            self.rows.append(row.close(self.width))

    def flush(self) -> None:
        """Close the open rows, padding each to full width."""
        self.rows += [row.close(self.width) for row in self._open]
        self._open = []

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
