"""Build a dataset from a corpus spec with Ray Data, streaming, on local Ray or a cluster:

  read + decode + validate + clean   (parallel, per work item)      -> staging Parquet
  de-duplicate, weight, split         (light columns, in the driver)
  tokenizer: train on a sample of the training split, or check the given one
  synthetic tasks and canaries        (seeded, from the training split)
  tokenize + pack, per split          (parallel, per batch of documents) -> shards
  manifest                            (digests, counts, quarantine report, canaries)

Every step reads and writes through pyarrow filesystems, so `out` may be a folder or s3://.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch
from ray.data import SaveMode
from ray.data.datasource import FilenameProvider

from infra.storage import (absolute, delete_dir, exists, join, list_files, read_bytes, resolve,
                           storage_env, write_bytes)
from model.config import get_preset
from model.tokenizer import EOS_ID, MediaPart, Tokenizer
from workers.data.manifest import (DOCUMENTS_NAME, MANIFEST_NAME, TOKENIZER_NAME, describe_split,
                                   sha256_bytes, write_manifest)
from workers.data.media import placeholder_tokens
from workers.data.pack import PACKED_SCHEMA, Packer, TokenizedDoc, loss_mask_for
from workers.data.readers import ReadContext, all_readers
from workers.data.records import SPLITS, Document, Quarantined, split_of
from workers.data.spec import CorpusSpec

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


log = logging.getLogger("longmix.data")


class BuildError(RuntimeError):
    pass


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
    """Ray Data stage: work items -> cleaned documents and quarantine records (staging rows)."""

    def __init__(self, spec_json: str, cache_dir: str):
        from workers.data.clean import clean_batch

        self.clean_batch = clean_batch
        self.spec = CorpusSpec.model_validate_json(spec_json)
        self.ctx = read_context(self.spec, cache_dir)
        self.sources = {s.name: s for s in self.spec.sources}
        self.readers = all_readers()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for source, item, order in zip(*(batch.column(c).to_pylist() for c in ("source", "item", "order"))):
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
            rows += [staging_row(f"{order:08d}.{i:06d}", r, self.spec, spec_source.split)
                     for i, r in enumerate(records)]
        return pa.Table.from_pylist(rows, schema=STAGING_SCHEMA)


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


class PackStage:
    """Ray Data stage: a batch of staged documents -> packed rows."""

    def __init__(self, tokenizer_json: str, preset: str, seq_len: int, copies: dict[str, int]):
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.model_cfg = get_preset(preset)
        self.seq_len = seq_len
        self.copies = copies

    def __call__(self, batch: pa.Table) -> pa.Table:
        packer = Packer(self.seq_len)
        for row in batch.to_pylist():
            n = self.copies.get(row["doc_key"], 0)
            if n:
                tokenized = tokenize_document(document_from_staging(row), self.tokenizer, self.model_cfg)
                for _ in range(n):
                    packer.add(tokenized)
        packer.flush()
        return packer.table() if packer.rows else PACKED_SCHEMA.empty_table()


@dataclass
class Plan:
    """The driver's decisions over the staged documents."""

    copies: dict[str, int]  # doc_key -> times packed (0: duplicate or weight-dropped)
    index: list[dict]  # the documents kept: key, source, uri, modality, split, hash, copies
    duplicates: int
    quarantined: list[dict]
    per_source: dict[str, dict]
    pii: dict[str, int]


def plan_documents(light: "pa.Table", spec: CorpusSpec) -> Plan:
    """De-duplicate by content hash (the first in corpus order wins) and apply source weights."""
    rows = sorted(light.to_pylist(), key=lambda r: r["doc_key"])
    weights = {s.name: s.weight for s in spec.sources}
    copies, seen, quarantined, index = {}, set(), [], []
    per_source = {s.name: Counter() for s in spec.sources}
    pii = Counter()
    duplicates = 0
    for r in rows:
        stats = per_source[r["source"]]
        if r["kind"] == "quarantine":
            quarantined.append({k: r[k] for k in ("source", "uri", "reason", "stage", "size_bytes", "sha256")})
            stats["quarantined"] += 1
            continue
        if spec.filters.dedup and r["content_hash"] in seen:
            duplicates += 1
            stats["duplicates"] += 1
            continue
        seen.add(r["content_hash"])
        w = weights[r["source"]]
        # weight 2.5: twice, plus a third time for half the documents (chosen by content hash)
        n = int(w) + (int(r["content_hash"][8:16], 16) / 16 ** 8 < w - int(w))
        copies[r["doc_key"]] = n
        index.append({k: r[k] for k in ("doc_key", "source", "uri", "modality", "split", "content_hash")}
                     | {"copies": n})
        stats["documents"] += 1
        stats["packed_copies"] += n
        stats[f"split_{r['split']}"] += 1
        for key, value in json.loads(r["meta"] or "{}").items():
            if key.startswith("pii_"):
                pii[key.removeprefix("pii_")] += int(value)
    return Plan(copies, index, duplicates, quarantined, {k: dict(v) for k, v in per_source.items()},
                dict(pii))


def text_sample(staging: pads.Dataset, copies: dict[str, int], sample_bytes: int) -> list[str]:
    """Training-split text, in corpus order, up to sample_bytes: for the tokenizer and haystacks."""
    table = staging.to_table(columns=["doc_key", "texts", "split", "modality"],
                             filter=(pads.field("kind") == "doc") & (pads.field("split") == "train"))
    texts, used = [], 0
    for row in sorted(table.to_pylist(), key=lambda r: r["doc_key"]):
        if not copies.get(row["doc_key"]) or row["modality"] != "text":
            continue
        text = "".join(row["texts"])
        texts.append(text)
        used += len(text)
        if used >= sample_bytes:
            break
    return texts


def resolve_tokenizer(spec: CorpusSpec, sample: list[str]) -> Tokenizer:
    if spec.tokenizer.path:
        data = read_bytes(spec.tokenizer.path)
        digest = sha256_bytes(data)
        if spec.tokenizer.sha256 and digest != spec.tokenizer.sha256:
            raise BuildError(f"tokenizer {spec.tokenizer.path}: sha256 {digest[:12]}… does not "
                             f"match the spec's {spec.tokenizer.sha256[:12]}…")
        tokenizer = Tokenizer.from_str(data.decode())
    else:
        if not sample:
            raise BuildError("no training-split text to train a tokenizer on; give tokenizer.path")
        tokenizer = Tokenizer.train(sample, vocab_size=spec.vocab_size)
    if tokenizer.vocab_size > get_preset(spec.preset).vocab_size:
        raise BuildError(f"tokenizer has {tokenizer.vocab_size} tokens; the {spec.preset} preset "
                         f"embeds {get_preset(spec.preset).vocab_size}")
    return tokenizer


def synthetic_documents(spec: CorpusSpec, haystacks: list[str], ctx: ReadContext
                        ) -> tuple[list[Document], list[dict]]:
    """Seeded synthetic tasks and canaries (training split), and the canary list for evals."""
    from workers.data import media_sources, synth

    syn, seed = spec.synthetic, spec.seed
    exclude = synth.eval_prompt_hashes([Path(p) for p in syn.exclude_prompts_from])
    docs: list[Document] = []
    if syn.retrieval:
        docs += synth.retrieval_examples(syn.retrieval, haystacks, syn.haystack_tokens * 4, seed)
    if syn.chat:
        docs += synth.chat_examples(syn.chat, syn.refusal_fraction, seed, exclude_hashes=exclude)
    if syn.spoken_needles:
        docs += media_sources.spoken_needle_examples(syn.spoken_needles, haystacks, ctx, seed)
    if syn.frame_needles:
        docs += media_sources.frame_needle_examples(syn.frame_needles, ctx, seed)
    canaries = synth.canary_records(syn.canaries, seed) if syn.canaries else []
    docs += synth.canary_documents(canaries, syn.canary_repeats, seed) if canaries else []
    for d in docs:
        d.source, d.split = "synthetic", "train"
    return docs, synth.canary_manifest(canaries) if canaries else []


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


class ShardNames(FilenameProvider):
    """Deterministic shard file names, <prefix>-<task>-<file>.parquet: no random write id."""

    def __init__(self, prefix: str):
        super().__init__(file_format="parquet")
        self.prefix = prefix

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"{self.prefix}-{task_index:05d}-{{i}}.parquet"  # Ray fills {i} per file


def timed_phases(callback: Callable[[str], None] | None):
    """Log each phase with the time the previous one took (and pass it to the caller's callback)."""
    last = {"name": None, "t": time.perf_counter()}

    def phase(name: str) -> None:
        now = time.perf_counter()
        if last["name"]:
            log.info("data build: %s took %.1f s", last["name"], now - last["t"])
        last.update(name=name, t=now)
        if callback:
            callback(name)
    return phase


@dataclass
class BuildResult:
    manifest_uri: str
    manifest: dict
    seconds: float


def build_dataset(spec: CorpusSpec, out: str, cache_dir: str, *, overwrite: bool = False,
                  on_phase: Callable[[str], None] | None = None) -> BuildResult:
    """Build the dataset described by `spec` into `out` (a folder or s3:// prefix)."""
    import ray

    from infra.ray_runtime import ensure_ray

    phase = timed_phases(on_phase)
    started = time.perf_counter()
    out = absolute(out)  # shard paths in the manifest are relative to this
    if exists(join(out, MANIFEST_NAME)) and not overwrite:
        raise BuildError(f"{out} already holds a dataset; pass overwrite to replace it")
    ensure_ray()
    data_ctx = ray.data.DataContext.get_current()
    data_ctx.execution_options.preserve_order = True  # deterministic shards
    data_ctx.enable_progress_bars = False
    readers = all_readers()
    ctx = read_context(spec, cache_dir)
    staging_uri = join(out, "_staging")
    for split in (*SPLITS, "_staging"):
        delete_dir(join(out, split))

    phase("listing sources")
    items = []
    for order, source in enumerate(spec.sources):
        for item in readers[source.reader].list_items(source, ctx):
            items.append({"source": source.name, "item": item, "order": len(items)})
    if not items:
        raise BuildError("the corpus spec's sources list no input at all")

    phase(f"reading, validating and cleaning {len(items)} work items")
    fs, staging_path = resolve(staging_uri)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    (ray.data.from_items(items, override_num_blocks=len(items))
        .map_batches(ReadStage, fn_constructor_args=(spec.model_dump_json(), str(cache_dir)),
                     batch_size=1, batch_format="pyarrow",
                     compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cpus),
                     runtime_env={"env_vars": storage_env()})
        .write_parquet(staging_path, filesystem=fs, filename_provider=ShardNames("staged"),
                       mode=SaveMode.OVERWRITE))

    phase("de-duplicating and weighting")
    staging = pads.dataset(staging_path, filesystem=fs, format="parquet", schema=STAGING_SCHEMA)
    plan = plan_documents(staging.to_table(columns=LIGHT_COLUMNS), spec)

    phase("tokenizer")
    sample = text_sample(staging, plan.copies, spec.tokenizer.sample_bytes)
    tokenizer = resolve_tokenizer(spec, sample)
    write_bytes(join(out, TOKENIZER_NAME), tokenizer.to_str().encode())

    phase("synthetic tasks and canaries")
    synthetic, canaries = synthetic_documents(spec, sample, ctx)
    too_long = [q for q in (check_fits_a_row(d, spec) for d in synthetic) if q]
    plan.quarantined += [q.to_row() for q in too_long]
    synthetic = [d for d in synthetic if not any(q.uri == d.uri for q in too_long)]
    if synthetic:
        rows = [staging_row(f"99999999.{i:06d}", d, spec, "train") for i, d in enumerate(synthetic)]
        write_bytes(join(staging_uri, "synthetic.parquet"),
                    parquet_bytes(pa.Table.from_pylist(rows, schema=STAGING_SCHEMA)))
        plan.copies.update({r["doc_key"]: 1 for r in rows})
        plan.index += [{k: r[k] for k in ("doc_key", "source", "uri", "modality", "split", "content_hash")}
                       | {"copies": 1} for r in rows]
        plan.per_source["synthetic"] = dict(Counter(d.meta.get("task", "other") for d in synthetic))

    staged_files = sorted(list_files(staging_uri))
    for split in SPLITS:
        phase(f"tokenizing and packing the {split} split")
        (ray.data.read_parquet([resolve(u)[1] for u in staged_files], filesystem=fs,
                               schema=STAGING_SCHEMA)
            .filter(expr=f"kind == 'doc' and split == '{split}'")
            .map_batches(PackStage, fn_constructor_args=(tokenizer.to_str(), spec.preset,
                                                         spec.packing.seq_len, plan.copies),
                         batch_size=spec.packing.docs_per_batch, batch_format="pyarrow",
                         compute=ray.data.ActorPoolStrategy(size=1),
                         runtime_env={"env_vars": storage_env()})
            .write_parquet(resolve(join(out, split))[1], filesystem=fs,
                           max_rows_per_file=spec.packing.rows_per_shard,
                           filename_provider=ShardNames(split), mode=SaveMode.OVERWRITE))

    phase("manifest")
    index_bytes = parquet_bytes(pa.Table.from_pylist(plan.index))
    write_bytes(join(out, DOCUMENTS_NAME), index_bytes)
    manifest = {
        "kind": "longmix.dataset",
        "name": spec.name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "spec": spec.model_dump(mode="json"),
        "spec_sha256": sha256_bytes(spec.model_dump_json().encode()),
        "preset": spec.preset,
        "seq_len": spec.packing.seq_len,
        "tokenizer": {"path": TOKENIZER_NAME, "sha256": tokenizer.digest(),
                      "vocab_size": tokenizer.vocab_size},
        "media": spec.media.model_dump(),
        "documents_index": {"path": DOCUMENTS_NAME, "sha256": sha256_bytes(index_bytes),
                            "documents": len(plan.index)},
        "sources": [{"name": s.name, "reader": s.reader, "location": s.location,
                     "modality": s.modality, "weight": s.weight,
                     "license": s.license or readers[s.reader].license,
                     **plan.per_source.get(s.name, {})} for s in spec.sources],
        "synthetic": plan.per_source.get("synthetic", {}),
        "duplicates_removed": plan.duplicates,
        "pii_scrubbed": plan.pii,
        "quarantine": {"count": len(plan.quarantined),
                       "by_reason_kind": dict(Counter(q["stage"] for q in plan.quarantined)),
                       "records": plan.quarantined},
        "canaries": canaries,
        "splits": {split: describe_split(out, split) for split in SPLITS},
    }
    delete_dir(staging_uri)
    phase("done")
    uri, manifest = write_manifest(out, manifest)
    return BuildResult(uri, manifest, time.perf_counter() - started)
