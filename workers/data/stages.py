"""The two parallel stages of a dataset build, and the staging format between them.

ReadStage:  work items -> cleaned documents and quarantine records, one staging Parquet file
            per work item; returns the light columns the driver plans with.
PackStage:  a run of staging files (documents of any split) -> packed shards under
            <out>/<split>/; returns one row per shard written.

Each stage writes its own files through pyarrow filesystems (a folder or s3://), named by
corpus order, so a build is deterministic and one Ray Data execution covers every split.
`workers.data.runners` runs them on Ray Data or in this process.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from infra.storage import join, read_bytes, write_bytes
from model.config import get_preset
from model.tokenizer import EOS_ID, MediaPart, Tokenizer
from workers.data.media import placeholder_tokens
from workers.data.pack import Packer, TokenizedDoc, loss_mask_for
from workers.data.preference import is_pair, pair_row, pair_table
from workers.data.readers import ReadContext, all_readers
from workers.data.records import Document, Quarantined, split_of
from workers.data.spec import CorpusSpec
from workers.data.synth import eval_prompt_hashes

STAGING_SCHEMA = pa.schema([
    ("doc_key", pa.string()), ("kind", pa.string()),  # "doc" | "quarantine"
    ("source", pa.string()), ("uri", pa.string()), ("modality", pa.string()),
    ("license", pa.string()), ("split", pa.string()), ("texts", pa.list_(pa.string())),
    ("media_kinds", pa.list_(pa.string())), ("media_shapes", pa.list_(pa.list_(pa.int32()))),
    ("media_bytes", pa.list_(pa.binary())), ("media_fps", pa.list_(pa.float64())),
    ("meta", pa.string()), ("content_hash", pa.string()), ("n_chars", pa.int64()),
    ("reason", pa.string()), ("stage", pa.string()), ("size_bytes", pa.int64()),
    ("sha256", pa.string()),
])
LIGHT_COLUMNS = ["doc_key", "kind", "source", "uri", "modality", "split", "meta", "content_hash",
                 "n_chars", "reason", "stage", "size_bytes", "sha256"]


SHARDS_SCHEMA = pa.schema([("split", pa.string()), ("uri", pa.string()), ("rows", pa.int64())])


def read_context(spec: CorpusSpec, cache_dir) -> ReadContext:
    return ReadContext(cache_dir=Path(cache_dir), model=get_preset(spec.preset),
                       image_size=spec.media.image_size, video_frames=spec.media.video_frames,
                       video_fps=spec.media.video_fps, audio_max_seconds=spec.media.audio_max_seconds,
                       max_file_bytes=spec.filters.max_file_bytes, seed=spec.seed)


def staging_row(key: str, record: Document | Quarantined, spec: CorpusSpec, forced_split: str) -> dict:
    row = dict.fromkeys(STAGING_SCHEMA.names)
    row.update(doc_key=key, source=record.source, uri=record.uri)
    if isinstance(record, Quarantined):
        row.update(kind="quarantine", **{k: v for k, v in record.to_row().items()
                                          if k not in ("source", "uri")})
        return row
    content_hash = record.content_hash()
    split = (forced_split if forced_split != "auto" else
             record.split or split_of(content_hash, spec.splits.validation_percent,
                                      spec.splits.test_percent))
    doc = record.to_row()
    row.update(kind="doc", modality=record.modality, license=record.license, split=split,
               texts=doc["texts"], media_kinds=doc["media_kinds"], media_shapes=doc["media_shapes"],
               media_bytes=doc["media_bytes"], media_fps=doc["media_fps"],
               meta=json.dumps(record.meta, sort_keys=True), content_hash=content_hash,
               n_chars=len(record.text))
    return row


def check_fits_a_row(doc: Document, spec: CorpusSpec) -> Quarantined | None:
    """A document with media cannot split across rows: refuse one that may not fit in a row.

    Upper bound before the tokenizer exists: byte-level BPE never uses more tokens than bytes.
    """
    if not doc.media:
        return None
    cfg = get_preset(spec.preset)
    tokens = 2 + len(doc.text.encode())  # <|bos|> ... <|eos|>
    for m in doc.media:
        timestamps = m.array.shape[0] * len(f"{m.array.shape[0] / (m.fps or 1.0):.1f}s") if m.kind == "video" else 0
        tokens += 2 + placeholder_tokens(m, cfg) + timestamps  # <|x_start|> ... <|x_end|>
    if tokens <= spec.packing.seq_len + 1:
        return None
    return Quarantined(doc.source, doc.uri, f"a document with media may need {tokens} tokens; packed "
                       f"rows hold {spec.packing.seq_len + 1} (raise packing.seq_len or shorten it)",
                       "validate")


class ReadStage:
    """Work items -> one staging file per item under `staging_uri`; returns its light columns."""

    def __init__(self, spec_json: str, cache_dir: str, staging_uri: str):
        from workers.data.clean import clean_batch

        self.clean_batch = clean_batch
        self.spec = CorpusSpec.model_validate_json(spec_json)
        self.ctx = read_context(self.spec, cache_dir)
        self.sources = {s.name: s for s in self.spec.sources}
        self.readers = all_readers()
        self.staging_uri = staging_uri
        self.eval_prompts = eval_prompt_hashes(
            [Path(p) for p in self.spec.synthetic.exclude_prompts_from])

    def __call__(self, batch: pa.Table) -> pa.Table:
        tables = []
        for source, item, order in zip(*(batch.column(c).to_pylist() for c in ("source", "item", "order"))):
            table = pa.Table.from_pylist(self.read_item(source, item, order), schema=STAGING_SCHEMA)
            write_bytes(staged_file(self.staging_uri, f"{order:08d}"), parquet_bytes(table))
            tables.append(table.select(LIGHT_COLUMNS))
        return pa.concat_tables(tables)

    def read_item(self, source: str, item: str, order: int) -> list[dict]:
        spec_source = self.sources[source]
        try:
            records = list(self.readers[spec_source.reader].read(spec_source, item, self.ctx))
        except Exception as e:  # a reader bug must not sink the corpus: quarantine the item
            records = [Quarantined(source, item, f"reader {spec_source.reader} failed: "
                                   f"{type(e).__name__}: {e}", "read")]
        docs = [r for r in records if isinstance(r, Document)]
        cleaned = iter(self.clean_batch(docs, self.spec.filters))
        records = [next(cleaned) if isinstance(r, Document) else r for r in records]
        records = [(isinstance(r, Document) and check_fits_a_row(r, self.spec)) or r for r in records]
        records = [self.eval_prompt(r) if isinstance(r, Document) and is_pair(r) else r
                   for r in records]
        return [staging_row(f"{order:08d}.{i:06d}", r, self.spec, spec_source.split)
                for i, r in enumerate(records)]


    def eval_prompt(self, pair: Document) -> Document | Quarantined:
        """A pair whose prompt is an evaluation prompt is quarantined: the evals would measure
        what it taught, not what the model does."""
        if pair.meta["prompt_hash"] not in self.eval_prompts:
            return pair
        return Quarantined(pair.source, pair.uri, "the prompt is one of the evaluation sets' "
                           "prompts (synthetic.exclude_prompts_from)", "validate",
                           len(pair.text.encode()), pair.content_hash())


def document_from_staging(row: dict) -> Document:
    return Document.from_row({**row, "meta": json.loads(row["meta"] or "{}")})


def tokenize_document(doc: Document, tokenizer: Tokenizer, spec_model) -> TokenizedDoc:
    parts: list[str | MediaPart] = []
    for i, text in enumerate(doc.texts):
        if text:
            parts.append(text)
        if i < len(doc.media):
            m = doc.media[i]
            parts.append(MediaPart(m.kind, torch.from_numpy(m.array.copy()), fps=m.fps or 1.0))
    ids, _ = tokenizer.encode_interleaved(parts, spec_model, bos=True)
    ids = np.array([*ids, EOS_ID], dtype=np.int32)
    return TokenizedDoc(ids, loss_mask_for(ids, chat=doc.meta.get("task") == "chat"), doc.media)


def staged_file(staging_uri: str, doc_key: str) -> str:
    """The staging file of a work item (its order, 8 digits) and of every document key it made
    (<order>.<index>): one per work item, named by its corpus order."""
    return join(staging_uri, f"staged-{doc_key.split('.')[0]}.parquet")


def pack_units(staging_uri: str, packed_chars: dict[str, int], chars_per_unit: int) -> list[dict]:
    """Runs of consecutive staging files holding at least chars_per_unit characters to pack
    (the last may hold fewer): PackStage's work items, in corpus order. Sized by the spec, not
    by the cluster, so the shards are the same wherever the build runs.

    packed_chars: doc_key -> characters it adds to the shards (its text x its copies)."""
    per_file = Counter()
    for key, chars in packed_chars.items():
        per_file[staged_file(staging_uri, key)] += chars + 1  # + 1: a document without text
    units, files, chars = [], [], 0
    for uri in sorted(per_file):
        files.append(uri)
        chars += per_file[uri]
        if chars >= chars_per_unit:
            units.append({"files": files})
            files, chars = [], 0
    return units + ([{"files": files}] if files else [])


class PackStage:
    """A run of staging files, in corpus order -> packed shards of at most rows_per_shard rows,
    <out>/<split>/<split>-<first doc_key>-<n>.parquet; returns one SHARDS_SCHEMA row each.

    A unit packs each split on its own: a row never mixes splits or units."""

    def __init__(self, tokenizer_json: str, preset: str, seq_len: int, open_rows: int,
                 copies: dict[str, int], out: str, rows_per_shard: int, kind: str = "corpus"):
        self.kind = kind  # preference: one row per pair (workers.data.preference), no packing
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.model_cfg = get_preset(preset)
        self.seq_len, self.open_rows = seq_len, open_rows
        self.copies = copies
        self.out = out
        self.rows_per_shard = rows_per_shard

    def __call__(self, unit: pa.Table) -> pa.Table:
        packers: dict[str, tuple[str, Packer | list]] = {}  # split -> (first doc_key, rows)
        for uri in unit.column("files")[0].as_py():
            for row in pq.read_table(pa.BufferReader(read_bytes(uri))).to_pylist():
                n = self.copies.get(row["doc_key"], 0)
                if not n:  # quarantined, duplicate or weighted out
                    continue
                _, packer = packers.setdefault(row["split"], (row["doc_key"], (
                    [] if self.kind == "preference" else Packer(self.seq_len, self.open_rows))))
                doc = document_from_staging(row)
                if self.kind == "preference":
                    packer += [pair_row(doc, self.tokenizer, self.seq_len)] * n
                    continue
                tokenized = tokenize_document(doc, self.tokenizer, self.model_cfg)
                for _ in range(n):
                    packer.add(tokenized)
        written = []
        for split, (first_key, packer) in packers.items():
            if isinstance(packer, Packer):
                packer.flush()
            table = packer.table() if isinstance(packer, Packer) else pair_table(packer)
            for n, start in enumerate(range(0, table.num_rows, self.rows_per_shard)):
                uri = join(self.out, split, f"{split}-{first_key}-{n:03d}.parquet")
                shard = table.slice(start, self.rows_per_shard)
                write_bytes(uri, parquet_bytes(shard))
                written.append({"split": split, "uri": uri, "rows": shard.num_rows})
        return pa.Table.from_pylist(written, schema=SHARDS_SCHEMA)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()
