"""Build a dataset from a corpus spec with Ray Data, streaming, on local Ray or a cluster:

  read + decode + validate + clean   (parallel, per work item)      -> staging Parquet
  de-duplicate, weight, split         (light columns, in the driver)
  tokenizer: train on a sample of the training split, or check the given one
  synthetic tasks and canaries        (seeded, from the training split)
  tokenize + pack, every split        (parallel, per batch of documents) -> shards
  manifest                            (digests, counts, quarantine report, canaries)

The two parallel steps are `workers.data.stages`, run by a `workers.data.runners` runner: two
Ray Data executions per build. Every step reads and writes through pyarrow filesystems, so
`out` may be a folder or s3://.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads

from infra.storage import absolute, delete_dir, exists, join, read_bytes, resolve, write_bytes
from model.config import get_preset
from model.tokenizer import Tokenizer
from workers.data.manifest import (DOCUMENTS_NAME, MANIFEST_NAME, TOKENIZER_NAME, describe_split,
                                   sha256_bytes, write_manifest)
from workers.data.readers import ReadContext, all_readers
from workers.data.records import SPLITS, Document, Quarantined
from workers.data.runners import RayRunner, StageRunner
from workers.data.spec import CorpusSpec
from workers.data.stages import (STAGING_SCHEMA, PackStage, ReadStage, check_fits_a_row,
                                 document_from_staging, pack_units, parquet_bytes, read_context,
                                 staged_file, staging_row)

log = logging.getLogger("longmix.data")
INDEX_COLUMNS = ("doc_key", "source", "uri", "modality", "split", "content_hash", "n_chars")
SYNTHETIC_ORDER = "99999999"  # synthetic documents sort after every work item


class BuildError(RuntimeError):
    pass


@dataclass
class Plan:
    """The driver's decisions over the staged documents."""

    copies: dict[str, int]  # doc_key -> times packed (0: duplicate or weight-dropped)
    index: list[dict]  # the documents kept: key, source, uri, modality, split, hash, chars, copies
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
        index.append({k: r[k] for k in INDEX_COLUMNS} | {"copies": n})
        stats["documents"] += 1
        stats["packed_copies"] += n
        stats[f"split_{r['split']}"] += 1
        for key, value in json.loads(r["meta"] or "{}").items():
            if key.startswith("pii_"):
                pii[key.removeprefix("pii_")] += int(value)
    return Plan(copies, index, duplicates, quarantined, {k: dict(v) for k, v in per_source.items()},
                dict(pii))


def text_sample(staging: pads.Dataset, copies: dict[str, int], sample_bytes: int) -> list[str]:
    """Training-split text, in corpus order, up to sample_bytes: for the tokenizer and haystacks
    (preference pairs' prompts are neither)."""
    table = staging.to_table(columns=["doc_key", "texts", "split", "modality", "meta"],
                             filter=(pads.field("kind") == "doc") & (pads.field("split") == "train"))
    texts, used = [], 0
    for row in sorted(table.to_pylist(), key=lambda r: r["doc_key"]):
        if not copies.get(row["doc_key"]) or row["modality"] != "text" or \
                json.loads(row["meta"] or "{}").get("task") == "preference":
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


def synthetic_documents(spec: CorpusSpec, haystacks: list[str], tokenizer: Tokenizer,
                        ctx: ReadContext) -> tuple[list[Document], list[dict]]:
    """Seeded synthetic tasks and canaries, and the canary list for evals; retrieval documents
    sized in the corpus's own tokens."""
    from workers.data import copies, media_sources, preference, retrieval, synth

    syn, seed = spec.synthetic, spec.seed
    exclude = synth.eval_prompt_hashes([Path(p) for p in syn.exclude_prompts_from])
    docs: list[Document] = []
    if syn.retrieval:
        docs += retrieval.retrieval_examples(
            syn.retrieval, haystacks, syn.haystack_tokens, seed, stream=spec.name,
            count_tokens=lambda text: len(tokenizer.encode(text)) + 2)  # <|bos|> ... <|eos|>
    if syn.drills:
        docs += retrieval.recall_drills(syn.drills, seed, stream=spec.name)
    if syn.copies:
        docs += copies.copy_documents(syn.copies, haystacks, seed, stream=spec.name)
    if syn.chat:
        docs += synth.chat_examples(syn.chat, syn.refusal_fraction, seed, exclude_hashes=exclude)
    if syn.preference:
        docs += preference.preference_pairs(
            syn.preference, seed, haystacks, syn.haystack_tokens, exclude_hashes=exclude,
            stream=spec.name, count_tokens=lambda text: len(tokenizer.encode(text)) + 2)
    if syn.spoken_needles:
        docs += media_sources.spoken_needle_examples(syn.spoken_needles, haystacks, ctx, seed)
    if syn.frame_needles:
        docs += media_sources.frame_needle_examples(syn.frame_needles, ctx, seed)
    # no eval needle among the training facts: refused, not mixed in
    retrieval.check_disjoint([d for d in docs if d.meta.get("task") in retrieval.FACT_TASKS
                              or d.meta.get("pair_source") == "retrieval"])
    canaries = synth.canary_records(syn.canaries, seed) if syn.canaries else []
    docs += synth.canary_documents(canaries, syn.canary_repeats, seed) if canaries else []
    for d in docs:
        # chat examples and preference pairs split by content hash like corpus documents, so
        # that sft and preference have a validation split; needles and canaries train only
        d.source = "synthetic"
        d.split = None if d.meta.get("task") in ("chat", preference.PAIR_TASK) else "train"
    return docs, synth.canary_manifest(canaries) if canaries else []


def keep_fitting_pairs(staging_uri: str, plan: Plan, tokenizer: Tokenizer, seq_len: int) -> None:
    """A preference dataset's rows are its pairs: a pair longer than a row is quarantined; the
    text documents, read to lend haystacks to the retrieval pairs, are not packed."""
    from workers.data.preference import PairError, is_pair, pair_row

    fs, path = resolve(staging_uri)
    staging = pads.dataset(path, filesystem=fs, format="parquet", schema=STAGING_SCHEMA)
    table = staging.to_table(filter=pads.field("kind") == "doc")
    dropped = set()
    for row in table.to_pylist():
        if not plan.copies.get(row["doc_key"]):
            continue
        doc = document_from_staging(row)
        if not is_pair(doc):
            dropped.add(row["doc_key"])
            continue
        try:
            pair_row(doc, tokenizer, seq_len)
        except PairError as e:
            dropped.add(row["doc_key"])
            plan.quarantined.append(Quarantined(doc.source, doc.uri, str(e), "validate",
                                                len(doc.text.encode()), row["content_hash"])
                                    .to_row())
    plan.copies.update(dict.fromkeys(dropped, 0))
    for entry in plan.index:
        if entry["doc_key"] in dropped:
            entry["copies"] = 0


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
                  on_phase: Callable[[str], None] | None = None,
                  runner: StageRunner | None = None) -> BuildResult:
    """Build the dataset described by `spec` into `out` (a folder or s3:// prefix), running the
    parallel stages on `runner` (default: Ray Data on the configured Ray)."""
    phase = timed_phases(on_phase)
    started = time.perf_counter()
    out = absolute(out)  # shard paths in the manifest are relative to this
    if exists(join(out, MANIFEST_NAME)) and not overwrite:
        raise BuildError(f"{out} already holds a dataset; pass overwrite to replace it")
    runner = runner or RayRunner()
    readers = all_readers()
    ctx = read_context(spec, cache_dir)
    staging_uri = join(out, "_staging")
    for split in (*SPLITS, "_staging"):
        delete_dir(join(out, split))

    phase("listing sources")
    items = []
    for source in spec.sources:
        for item in readers[source.reader].list_items(source, ctx):
            items.append({"source": source.name, "item": item, "order": len(items)})
    if not items:
        raise BuildError("the corpus spec's sources list no input at all")

    phase(f"reading, validating and cleaning {len(items)} work items")
    light = runner.map_items(ReadStage, (spec.model_dump_json(), str(cache_dir), staging_uri), items)

    phase("de-duplicating and weighting")
    plan = plan_documents(light, spec)

    phase("tokenizer")
    fs, staging_path = resolve(staging_uri)
    staging = pads.dataset(staging_path, filesystem=fs, format="parquet", schema=STAGING_SCHEMA)
    sample = text_sample(staging, plan.copies, spec.tokenizer.sample_bytes)
    tokenizer = resolve_tokenizer(spec, sample)
    write_bytes(join(out, TOKENIZER_NAME), tokenizer.to_str().encode())

    phase("synthetic tasks and canaries")
    synthetic, canaries = synthetic_documents(spec, sample, tokenizer, ctx)
    too_long = [q for q in (check_fits_a_row(d, spec) for d in synthetic) if q]
    plan.quarantined += [q.to_row() for q in too_long]
    synthetic = [d for d in synthetic if not any(q.uri == d.uri for q in too_long)]
    if synthetic:
        rows = [staging_row(f"{SYNTHETIC_ORDER}.{i:06d}", d, spec, "auto") for i, d in enumerate(synthetic)]
        write_bytes(staged_file(staging_uri, rows[0]["doc_key"]),
                    parquet_bytes(pa.Table.from_pylist(rows, schema=STAGING_SCHEMA)))
        plan.copies.update({r["doc_key"]: 1 for r in rows})
        plan.index += [{k: r[k] for k in INDEX_COLUMNS} | {"copies": 1} for r in rows]
        plan.per_source["synthetic"] = dict(Counter(d.meta.get("task", "other") for d in synthetic))

    if spec.kind == "preference":  # (part of the synthetic phase: the pairs are all there now)
        keep_fitting_pairs(staging_uri, plan, tokenizer, spec.packing.seq_len)

    if not any(plan.copies.values()):
        reasons = Counter(q["reason"].split(":")[0] for q in plan.quarantined).most_common(3)
        raise BuildError(f"nothing to pack: every input was quarantined ({len(plan.quarantined)}: "
                         f"{', '.join(f'{r} x{n}' for r, n in reasons) or 'none'}), a duplicate "
                         f"({plan.duplicates}) or weighted out")

    phase("tokenizing and packing every split")
    runner.map_items(PackStage, (tokenizer.to_str(), spec.preset, spec.packing.seq_len,
                                 spec.packing.open_rows, plan.copies,
                                 out, spec.packing.rows_per_shard, spec.kind),
                     pack_units(staging_uri, {d["doc_key"]: d["n_chars"] * d["copies"]
                                              for d in plan.index if d["copies"]},
                                spec.packing.chars_per_task))

    phase("manifest")
    index_bytes = parquet_bytes(pa.Table.from_pylist(plan.index))
    write_bytes(join(out, DOCUMENTS_NAME), index_bytes)
    manifest = {
        "kind": "longmix.dataset",
        "name": spec.name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "spec": spec.model_dump(mode="json"),
        "spec_sha256": spec.digest(),
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
