"""The data pipeline end to end on local Ray: the tiny spec, the broken corpus, S3."""

import json

import jsonschema
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from model.config import get_preset
from model.encoders import Media, placeholder_count
from model.tokenizer import PLACEHOLDER_IDS, Tokenizer
from model.transformer import Transformer
from workers.data.build import BuildError, build_dataset
from pipelines.contracts import SCHEMA_DIR
from workers.data.manifest import ManifestError, manifest_digest, read_manifest, verify_manifest
from workers.data.records import MEDIA_DTYPES
from workers.data.runners import InProcessRunner
from workers.data.spec import load_spec, parse_spec


@pytest.fixture(scope="module")
def tiny_build(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-dataset")
    cache = tmp_path_factory.mktemp("cache")
    result = build_dataset(load_spec("tiny"), str(out), str(cache))
    return out, cache, result


def _rows(root, split):
    tables = [pq.read_table(p) for p in sorted((root / split).glob("*.parquet"))]
    return [row for t in tables for row in t.to_pylist()]


def test_tiny_spec_builds_every_split_with_every_modality(tiny_build):
    out, _, result = tiny_build
    manifest = verify_manifest(str(out))
    assert manifest["digest"] == result.manifest["digest"]
    train = manifest["splits"]["train"]
    assert train["rows"] > 0 and all(manifest["splits"][s]["rows"] > 0 for s in ("validation", "test"))
    assert all(train["tokens"][m] > 0 for m in ("text", "image", "audio", "video"))
    assert manifest["synthetic"]["retrieval"] == 4 and manifest["synthetic"]["chat"] == 8
    assert manifest["synthetic"]["copies"] == manifest["synthetic"]["drills"] == 4
    assert len(manifest["canaries"]) == 2 and {"prefix", "secret"} <= set(manifest["canaries"][0])
    assert {s["license"] for s in manifest["sources"]} >= {"PSF-2.0"}
    assert manifest["tokenizer"]["vocab_size"] == 512


def test_splits_are_disjoint_by_content(tiny_build):
    out, _, _ = tiny_build
    index = pq.read_table(out / "documents.parquet").to_pylist()
    split_of_hash = {}
    for doc in index:
        assert split_of_hash.setdefault(doc["content_hash"], doc["split"]) == doc["split"]
    assert len(split_of_hash) == len(index)  # de-duplicated
    assert {d["split"] for d in index} == {"train", "validation", "test"}
    synthetic = [d for d in index if d["source"] == "synthetic"]
    for task in ("copies", "drills"):
        assert sum(d["uri"].startswith(f"synthetic://{task}/") for d in synthetic) == 4
    assert all(d["split"] == "train" for d in synthetic if not d["uri"].startswith("synthetic://chat"))


def test_rows_respect_document_boundaries_and_carry_their_media(tiny_build):
    out, _, result = tiny_build
    cfg = get_preset("tiny")
    tokenizer = Tokenizer.from_file(out / "tokenizer.json")
    model = Transformer(cfg).eval()
    seq_len = result.manifest["seq_len"]
    with_media = 0
    for row in _rows(out, "train"):
        tokens, docs = np.array(row["tokens"]), np.array(row["doc_ids"])
        assert len(tokens) == seq_len + 1
        assert (np.diff(docs[docs >= 0]) >= 0).all()  # documents contiguous, in order
        media = Media()
        for kind, shape, data in zip(row["media_kinds"], row["media_shapes"], row["media_bytes"]):
            array = np.frombuffer(data, dtype=MEDIA_DTYPES[kind]).reshape(shape)
            media.of(kind).append(torch.from_numpy(array.astype(np.float32) if kind == "audio" else array.copy()))
        for kind, tid in PLACEHOLDER_IDS.items():
            per_item = [placeholder_count(kind, m, cfg) * (m.shape[0] if kind == "video" else 1)
                        for m in media.of(kind)]
            assert int((tokens == tid).sum()) == sum(per_item)
        if row["media_kinds"]:
            with_media += 1
            with torch.no_grad():  # the model accepts the row as it is
                model(torch.tensor(tokens[None, :-1]), media, doc_ids=torch.tensor(docs[None, :-1]))
    assert with_media > 0
    assert tokenizer.vocab_size == 512


def test_manifest_digests_catch_a_changed_shard(tiny_build, tmp_path):
    import shutil
    out, _, _ = tiny_build
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shard = sorted((copy / "train").glob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ManifestError, match=shard.name):
        verify_manifest(str(copy))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["seq_len"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="does not match its digest"):
        read_manifest(str(copy))


def test_the_same_build_in_one_process_gives_the_same_dataset(tiny_build, tmp_path):
    """Deterministic, and Ray changes nothing: same shards, same digests, byte for byte."""
    out, cache, first = tiny_build
    again = build_dataset(load_spec("tiny"), str(tmp_path / "again"), str(cache),
                          runner=InProcessRunner())
    assert again.manifest["digest"] == first.manifest["digest"]
    shards = {s["path"]: s["sha256"] for s in first.manifest["splits"]["train"]["shards"]}
    assert shards == {s["path"]: s["sha256"] for s in again.manifest["splits"]["train"]["shards"]}
    with pytest.raises(BuildError, match="already holds a dataset"):
        build_dataset(load_spec("tiny"), str(out), str(cache))


def test_broken_corpus_is_quarantined_in_full(ray_local, tmp_path):
    from tests.workers.data.broken_corpus import (AUDIO_MAX_SECONDS, GOOD, MAX_FILE_BYTES, SOURCES,
                                                  write_broken_corpus)

    root = tmp_path / "corpus"
    expected = write_broken_corpus(root)
    spec = parse_spec({
        "name": "broken", "preset": "tiny",
        "media": {"image_size": 16, "audio_max_seconds": AUDIO_MAX_SECONDS},
        "filters": {"max_file_bytes": MAX_FILE_BYTES, "min_chars": 1, "dedup": False},  # some good
        # inputs repeat each other on purpose
        "sources": [{"name": f"{folder}", "modality": modality, "reader": reader,
                     "location": str(root / folder), "options": options}
                    for reader, modality, folder, options in SOURCES],
        "splits": {"validation_percent": 0, "test_percent": 0},
        "tokenizer": {"vocab_size": 300, "sample_bytes": 10000},
    })
    result = build_dataset(spec, str(tmp_path / "out"), str(tmp_path / "cache"))
    records = {q["uri"]: q["reason"] for q in result.manifest["quarantine"]["records"]}
    kept = {d["uri"] for d in pq.read_table(tmp_path / "out" / "documents.parquet").to_pylist()}
    broken = {rel: fragment for rel, fragment in expected.items() if fragment != GOOD}
    assert len(broken) >= 15
    for rel, fragment in expected.items():
        uri = str(root / rel)
        if fragment == GOOD:
            assert uri in kept, f"good input {rel} was lost"
        else:
            assert fragment in records.get(uri, ""), (rel, records.get(uri))
    assert result.manifest["quarantine"]["count"] == len(broken)
    assert result.manifest["splits"]["train"]["rows"] > 0


def test_the_same_pipeline_writes_to_s3(ray_local, s3_server, tmp_path):
    spec = parse_spec({
        "name": "s3", "preset": "tiny", "media": {"image_size": 16},
        "sources": [{"name": "docs", "modality": "text", "reader": "pydoc-topics",
                     "options": {"max_docs": 30}},
                    {"name": "digits", "modality": "image", "reader": "sklearn-digits",
                     "options": {"max_docs": 4}}],
        "packing": {"seq_len": 128}, "tokenizer": {"vocab_size": 300, "sample_bytes": 20000},
    })
    uri = f"s3://{s3_server['bucket']}/datasets/s3"
    result = build_dataset(spec, uri, str(tmp_path / "cache"))
    manifest = verify_manifest(uri)
    assert manifest["digest"] == result.manifest["digest"]
    keys = {o["Key"] for o in s3_server["client"].list_objects_v2(
        Bucket=s3_server["bucket"], Prefix="datasets/s3/")["Contents"]}
    assert "datasets/s3/manifest.json" in keys and any(k.startswith("datasets/s3/train/") for k in keys)
    assert not any("_staging" in k for k in keys)


def test_the_manifest_follows_its_published_schema_and_a_malformed_one_is_refused(tiny_build,
                                                                                  tmp_path):
    out, _, _ = tiny_build
    written = json.loads((out / "manifest.json").read_text())
    schema = json.loads((SCHEMA_DIR / "2-dataset-manifest.json").read_text())
    jsonschema.validate(written, schema)

    broken = {k: v for k, v in written.items() if k != "splits"}
    broken["digest"] = manifest_digest(broken)  # well sealed, but not a manifest
    (tmp_path / "manifest.json").write_text(json.dumps(broken))
    with pytest.raises(ManifestError, match="splits"):
        read_manifest(str(tmp_path))
