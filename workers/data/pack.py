"""Packing: documents of token ids -> fixed-length training sequences with document ids, so
attention can be confined to each document (see model.attention.attention_mask)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from model.tokenizer import EOS_ID


@dataclass
class PackedSequences:
    tokens: torch.Tensor  # (N, L + 1) int64: inputs are [:, :-1], targets [:, 1:]
    doc_ids: torch.Tensor  # (N, L + 1) int64: the document each token came from

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.tokens.numel()


def pack_documents(documents: Iterable[list[int]], seq_len: int) -> PackedSequences:
    """Concatenate documents, each closed by <|eos|>, and cut the stream into rows of seq_len + 1.

    A document may continue into the next row; the trailing partial row is dropped.
    """
    stream: list[int] = []
    doc_of: list[int] = []
    for doc_index, ids in enumerate(documents):
        stream += [*ids, EOS_ID]
        doc_of += [doc_index] * (len(ids) + 1)
    width = seq_len + 1
    rows = len(stream) // width
    if rows == 0:
        raise ValueError(f"{len(stream)} tokens cannot fill one sequence of {width}")
    tokens = torch.tensor(stream[: rows * width]).view(rows, width)
    doc_ids = torch.tensor(doc_of[: rows * width]).view(rows, width)
    return PackedSequences(tokens, doc_ids)


def split_of(text: str, validation_percent: int = 5) -> str:
    """'train' or 'validation' from a hash of the document, stable across runs and machines."""
    bucket = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % 100
    return "validation" if bucket < validation_percent else "train"
