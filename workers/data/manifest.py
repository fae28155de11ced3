"""The dataset manifest (contract 2, docs/contracts.md): the shards with their row and token counts per modality
and sha256, the tokenizer's digest, the quarantine report, the canaries, and the corpus spec it
came from. Training reads only this document, and verifies it before any worker starts."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, ValidationError

from infra.storage import absolute, exists, join, list_files, read_bytes, resolve, write_bytes
from model.tokenizer import PAD_ID, PLACEHOLDER_IDS

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
DOCUMENTS_NAME = "documents.parquet"  # every document kept: source, uri, split, content hash


class ManifestError(ValueError):
    """A manifest is unreadable, or a file it names is missing or does not match its digest."""


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # later fields are additions, not a new version


class FileEntry(_Open):
    path: str  # relative to the dataset folder
    sha256: str


class ShardEntry(FileEntry):
    rows: int
    tokens: dict[str, int]  # non-padding tokens by modality (placeholders count for their medium)


class SplitEntry(_Open):
    rows: int
    tokens: dict[str, int]
    shards: list[ShardEntry]


class TokenizerEntry(FileEntry):
    vocab_size: int


class DocumentsEntry(FileEntry):
    documents: int


class SourceEntry(_Open):
    name: str
    reader: str
    location: str | None
    modality: str
    weight: float
    license: str


class QuarantineEntry(_Open):
    count: int
    by_reason_kind: dict[str, int]
    records: list[dict]  # each rejected input: its source, uri, stage and reason


class Manifest(_Open):
    """Contract 2: what a dataset build wrote, as `manifest.json` holds it."""

    kind: str  # "longmix.dataset"
    schema_version: int
    digest: str  # manifest_digest: sha256 of the rest, without created_at
    name: str
    created_at: str
    spec: dict  # the corpus spec (contract 1) it was built from
    spec_sha256: str
    preset: str
    seq_len: int
    tokenizer: TokenizerEntry
    media: dict
    documents_index: DocumentsEntry
    sources: list[SourceEntry]
    synthetic: dict
    duplicates_removed: int
    pii_scrubbed: dict
    quarantine: QuarantineEntry
    canaries: list[dict]
    splits: dict[str, SplitEntry]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def modality_token_counts(tokens: np.ndarray) -> dict[str, int]:
    """Non-padding tokens by modality: placeholders count for their medium, the rest as text."""
    counts = {kind: int((tokens == tid).sum()) for kind, tid in PLACEHOLDER_IDS.items()}
    counts["text"] = int((tokens != PAD_ID).sum()) - sum(counts.values())
    return counts


def describe_shard(root: str, uri: str) -> dict:
    """Path relative to the dataset root, sha256, rows and tokens per modality of one shard."""
    data = read_bytes(uri)
    fs, path = resolve(uri)
    table = pq.read_table(path, filesystem=fs, columns=["tokens"])
    flat = table.column("tokens").combine_chunks().flatten().to_numpy()
    return {"path": uri[len(root.rstrip("/")) + 1:], "sha256": sha256_bytes(data),
            "rows": table.num_rows, "tokens": modality_token_counts(flat)}


def describe_split(root: str, split: str) -> dict:
    root = absolute(root)  # listed shards come back absolute; their manifest paths are relative
    folder = join(root, split)
    uris = list_files(folder) if exists(folder) else []  # a split may be empty (0 percent)
    shards = [describe_shard(root, u) for u in uris if u.endswith(".parquet")]
    tokens = Counter()
    for s in shards:
        tokens.update(s["tokens"])
    return {"rows": sum(s["rows"] for s in shards), "tokens": dict(tokens), "shards": shards}


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's content, excluding the digest field and the creation time."""
    body = {k: v for k, v in manifest.items() if k not in ("digest", "created_at")}
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def write_manifest(root: str, manifest: dict) -> tuple[str, dict]:
    """Write manifest.json with its schema version and digest; return its URI and the content."""
    manifest = {**manifest, "schema_version": SCHEMA_VERSION}
    manifest["digest"] = manifest_digest(manifest)
    uri = join(root, MANIFEST_NAME)
    write_bytes(uri, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return uri, manifest


def read_manifest(uri: str) -> dict:
    """Load a manifest (its URI, or the dataset folder holding it) and check its own digest."""
    uri = absolute(uri)
    if not uri.endswith(".json"):
        uri = join(uri, MANIFEST_NAME)
    try:
        manifest = json.loads(read_bytes(uri))
    except (OSError, json.JSONDecodeError) as e:
        raise ManifestError(f"{uri}: unreadable manifest ({e})") from e
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(f"{uri}: schema_version {manifest.get('schema_version')!r}, "
                            f"expected {SCHEMA_VERSION}")
    if manifest.get("digest") != manifest_digest(manifest):
        raise ManifestError(f"{uri}: the manifest's content does not match its digest (edited?)")
    try:
        Manifest.model_validate(manifest)
    except ValidationError as e:
        raise ManifestError(f"{uri}: not a dataset manifest ({e.error_count()} problems: "
                            f"{e.errors()[0]['loc']}: {e.errors()[0]['msg']})") from None
    manifest["uri"] = uri
    return manifest


def dataset_root(manifest: dict) -> str:
    return manifest["uri"].rsplit("/", 1)[0]


def verify_manifest(uri: str) -> dict:
    """read_manifest, then check the tokenizer and every shard against their sha256."""
    manifest = read_manifest(uri)
    root = dataset_root(manifest)
    expected = {TOKENIZER_NAME: manifest["tokenizer"]["sha256"],
                DOCUMENTS_NAME: manifest["documents_index"]["sha256"]}
    for split in manifest["splits"].values():
        expected.update({s["path"]: s["sha256"] for s in split["shards"]})
    for rel, digest in expected.items():
        try:
            actual = sha256_bytes(read_bytes(join(root, rel)))
        except OSError as e:
            raise ManifestError(f"{join(root, rel)}: named by the manifest but unreadable ({e})") from e
        if actual != digest:
            raise ManifestError(f"{join(root, rel)}: sha256 {actual[:12]}… does not match the "
                                f"manifest's {digest[:12]}…")
    return manifest
