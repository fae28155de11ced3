"""The held-out data the evals read: prose for haystacks, sequences per modality for perplexity,
and the PII canaries planted in training. From a dataset manifest (its test split, never trained
on, and its canary records), or without one from the Python docs, named as not held out."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq
import torch

from infra.storage import join, resolve
from model.encoders import Media
from model.tokenizer import PLACEHOLDER_IDS, SPECIAL_IDS, Tokenizer
from workers.data.manifest import TOKENIZER_NAME, dataset_root, read_manifest
from workers.data.records import MEDIA_DTYPES
from workers.data.sources import python_docs_corpus
from workers.evals.adapters import TokenSequence

MIN_TEXT_CHARS = 200  # shorter held-out text is no haystack material


@dataclass
class HeldOut:
    name: str  # names the data in the report: "<dataset>/<split>" or "pydoc-topics"
    digest: str  # the manifest's digest, or sha256 of the texts
    texts: list[str]
    sequences: list[TokenSequence] = field(default_factory=list)
    canaries: list[dict] = field(default_factory=list)
    held_out: bool = True  # False: the fallback texts may have been trained on


def load_heldout(manifest_uri: str | None, split: str = "test",
                 max_sequences: int = 64) -> HeldOut:
    if manifest_uri is None:
        texts = python_docs_corpus()
        digest = hashlib.sha256("\0".join(texts).encode()).hexdigest()
        sequences = [TokenSequence([], None, t, "text") for t in texts]
        return HeldOut("pydoc-topics", digest, texts, sequences, held_out=False)
    manifest = read_manifest(manifest_uri)
    root = dataset_root(manifest)
    if split not in manifest["splits"]:
        raise ValueError(f"{manifest['uri']}: no split {split!r}; it has "
                         f"{', '.join(manifest['splits'])}")
    shards = manifest["splits"][split]["shards"]
    if not shards:
        raise ValueError(f"{manifest['uri']}: the {split} split is empty; evals need held-out data")
    tokenizer = Tokenizer.from_str(_read_text(join(root, TOKENIZER_NAME)))
    sequences: list[TokenSequence] = []
    for shard in shards:
        fs, path = resolve(join(root, shard["path"]))
        for row in pq.read_table(path, filesystem=fs).to_pylist():
            sequences += _row_documents(row, tokenizer, manifest["tokenizer"]["sha256"])
    texts = [s.text for s in sequences if s.modality == "text" and len(s.text) >= MIN_TEXT_CHARS]
    by_length = sorted(sequences, key=lambda s: -len(s.ids))  # perplexity wants the long ones
    kept = [s for modality in ("text", "image", "audio", "video")
            for s in [s for s in by_length if s.modality == modality][:max_sequences]]
    return HeldOut(f"{manifest['name']}/{split}", manifest["digest"], texts, kept,
                   manifest.get("canaries") or [])


def _read_text(uri: str) -> str:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def _row_documents(row: dict, tokenizer: Tokenizer, tokenizer_digest: str) -> list[TokenSequence]:
    """A packed row -> its documents (runs of one doc id), each with the media its placeholders
    stand for, in order. A text document cut at the row's end is kept as the part in this row."""
    tokens, doc_ids = np.array(row["tokens"]), np.array(row["doc_ids"])
    media = [(kind, np.frombuffer(blob, dtype=MEDIA_DTYPES[kind]).reshape(shape))
             for kind, shape, blob in zip(row["media_kinds"], row["media_shapes"],
                                          row["media_bytes"])]
    out = []
    for doc in np.unique(doc_ids[doc_ids >= 0]):
        ids = tokens[doc_ids == doc].tolist()
        item = Media()
        for kind in ("image", "audio", "video"):
            runs = ids.count(SPECIAL_IDS[f"<|{kind}_start|>"])
            for _ in range(runs):
                index = next(i for i, (k, _) in enumerate(media) if k == kind)
                _, array = media.pop(index)
                item.of(kind).append(torch.from_numpy(
                    array.astype(np.float32) if kind == "audio" else array.copy()))
        modality = next((k for k in ("video", "audio", "image") if PLACEHOLDER_IDS[k] in ids),
                        "text")
        out.append(TokenSequence(ids, item, tokenizer.decode(ids, skip_special=True), modality,
                                 tokenizer_digest))
    return out
