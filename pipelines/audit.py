"""A signed, hash-chained, append-only audit log in storage (contract 6, docs/contracts.md;
the threat model is in docs/security.md).

Every gate decision, review request, approval, rejection, override, deploy and rollback is one
record: one JSON object per record at `<audit_uri>/<seq:08d>.json`, never overwritten. Each
record carries `prev`, the previous record's hash (64 zeros for the first), `hash`, the sha256
of the canonical JSON (sorted keys, no spaces, UTF-8) of all its other fields but the
signature, and `signature`, an Ed25519 signature of `hash` by the log's signing key, which only
the promotion step holds (`AuditKeys`). After each append a signed head (the new record's seq
and hash) is written beside the log, at `<audit_uri>-heads/<seq:08d>.json`, as CloudTrail
writes digest files beside its logs. `verify` checks every record against the public key, so:

- an edited record no longer hashes to its `hash`;
- a forged one (unsigned, signed with another key, or its hashes recomputed by someone without
  the key) has no signature the public key accepts;
- a removed record leaves a gap in `seq` and a `prev` that names a missing hash;
- a reordered (swapped or renamed) record sits in a file whose name is not its `seq`;
- a removed *last* record (or several) leaves the latest signed head naming a seq past the end.

What the log cannot tell alone is a rollback of the whole storage to an earlier state, records
and heads together: `verify(referenced=referenced_hashes(registry))` catches it with the hashes
that MLflow holds (an approved version's `approval.receipt`, and `audit.head`, set on the version
each record names when the log is given the registry).

Writes: each record (and head) is created only if its name is free, so two writers never share
a `seq` (the loser re-reads the tail and appends after it): locally a hidden temporary file
hard-linked into place, on S3 a conditional put (If-None-Match: *) (`infra.storage.create_new`).
"""

from __future__ import annotations

import base64
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from infra.digests import json_digest
from infra.settings import Settings, get_settings
from infra.storage import create_new, exists, join, list_files, read_bytes

GENESIS = "0" * 64  # the `prev` of the first record
RECORD_NAME = re.compile(r"(\d{8})\.json")
HEAD_TAG = "audit.head"  # on a model version: the hash of the last record that named it
RECEIPT_TAG = "approval.receipt"  # on an approved version: its approval record's hash
APPEND_ATTEMPTS = 20  # another writer took our seq: re-read the tail and try the next one
Signed = TypeVar("Signed", bound=BaseModel)  # AuditRecord or AuditHead


class AuditError(ValueError):
    """The log does not hold up; the message names the record (seq, file) and why."""


class AuditRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int = Field(ge=1)
    at: str  # UTC, ISO 8601
    event: str  # gate, review_requested, approval, rejection, override, deploy, rollback, ...
    actor: str  # who did it
    model: str | None = None  # NAME/VERSION
    digest: str | None = None  # the model's longmix.digest
    details: dict[str, Any] = {}
    prev: str  # the previous record's hash; GENESIS for the first
    hash: str  # sha256 of the canonical JSON of every other field but the signature
    signature: str  # Ed25519 signature of `hash` by the log's signing key, base64

    @classmethod
    def hashed(cls, **fields: Any) -> "AuditRecord":
        """A record with its hash computed, not yet signed; fields normalised through the model
        first so the hash covers exactly what is written (and read back)."""
        unhashed = cls.model_validate({**fields, "hash": "", "signature": ""})
        return unhashed.model_copy(update={"hash": unhashed.computed_hash()})

    def computed_hash(self) -> str:
        return json_digest(self.model_dump(mode="json", exclude={"hash", "signature"}))

    def signed_text(self) -> str:
        return self.hash


class AuditHead(BaseModel):
    """The log's last record as one append left it, signed and kept outside the log's folder:
    a record removed from the tail leaves the latest head naming a seq past the log's end."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int = Field(ge=1)  # the last record's
    hash: str  # the last record's
    at: str  # UTC, ISO 8601
    signature: str  # Ed25519 signature of the sha256 of the canonical JSON of the other fields

    def signed_text(self) -> str:
        return json_digest(self.model_dump(mode="json", exclude={"signature"}))


def sign(key: Ed25519PrivateKey, text: str) -> str:
    return base64.b64encode(key.sign(text.encode())).decode()


def signature_holds(public: Ed25519PublicKey, signed: AuditRecord | AuditHead) -> bool:
    try:
        public.verify(base64.b64decode(signed.signature, validate=True),
                      signed.signed_text().encode())
    except (InvalidSignature, ValueError):  # ValueError: not base64
        return False
    return True


def seal(key: Ed25519PrivateKey, unsigned: Signed) -> Signed:
    """A record or head with its signed text signed."""
    return unsigned.model_copy(update={"signature": sign(key, unsigned.signed_text())})


@dataclass(frozen=True)
class AuditKeys:
    """The log's Ed25519 key pair, as PEM files: `signing` (the private key: only the promotion
    step reads it, and it is never printed or logged) and `public` (the key `verify` trusts).
    `create`: the embedded default, which makes the pair at first use (the signing key with mode
    0600); otherwise a missing key is refused."""
    signing: Path
    public: Path
    create: bool = False

    def signing_key(self) -> Ed25519PrivateKey:
        if self.create and not self.public.is_file():
            self._create_pair()
        if not self.signing.is_file():
            raise AuditError(f"no audit signing key at {self.signing}: only the promotion step "
                             "holds it (LONGMIX_AUDIT_SIGNING_KEY_FILE names where)")
        key = self._private_key()
        if _raw(key.public_key()) != _raw(self.verifying_key()):
            raise AuditError(f"the signing key {self.signing} is not the pair of the public key "
                             f"{self.public}: verify would refuse every record it signed")
        return key

    def verifying_key(self) -> Ed25519PublicKey:
        if not self.public.is_file():
            raise AuditError(f"no audit public key at {self.public}, so no signature can be "
                             "checked (LONGMIX_AUDIT_PUBLIC_KEY_FILE names where it is)")
        return _load_key(self.public, serialization.load_pem_public_key, Ed25519PublicKey)

    def _private_key(self) -> Ed25519PrivateKey:
        return _load_key(self.signing, lambda data: serialization.load_pem_private_key(data, None),
                         Ed25519PrivateKey)

    def _create_pair(self) -> None:
        """The signing key unless there is one, then its public key; of two processes making
        either at once, the first one's file stands (the other's is discarded unseen)."""
        self.signing.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        try:
            create_new(str(self.signing), pem)  # created with mode 0600
        except FileExistsError:
            pass
        public = self._private_key().public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        try:
            create_new(str(self.public), public)
            self.public.chmod(0o644)  # public: anyone may verify
        except FileExistsError:
            pass


def _load_key(path: Path, load: Callable[[bytes], Any], kind: type):
    """The key in a PEM file; AuditError naming the file (never its content) if it is not one."""
    try:
        key = load(path.read_bytes())
    except (OSError, ValueError, UnsupportedAlgorithm) as e:
        raise AuditError(f"{path}: not a readable PEM key ({type(e).__name__})") from None
    if not isinstance(key, kind):
        raise AuditError(f"{path}: not an Ed25519 key")
    return key


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class AuditLog:
    """`registry`: an MLflow client; given, each record that names a model version is anchored
    on it too (HEAD_TAG), outside the storage, where `referenced_hashes` finds it."""

    def __init__(self, uri: str, keys: AuditKeys, registry=None):
        self.uri = str(uri).rstrip("/")
        self.heads_uri = f"{self.uri}-heads"  # beside the log, not in it: see AuditHead
        self.keys = keys
        self.registry = registry

    def record_uri(self, seq: int) -> str:
        return join(self.uri, f"{seq:08d}.json")

    def head_uri(self, seq: int) -> str:
        return join(self.heads_uri, f"{seq:08d}.json")

    def append(self, event: str, actor: str, *, model: str | None = None,
               digest: str | None = None, details: dict | None = None) -> AuditRecord:
        """Write the next record after the current last one, then its signed head; return it."""
        if not event or not actor:
            raise AuditError("an audit record needs an event and an actor")
        key = self.keys.signing_key()
        for attempt in range(APPEND_ATTEMPTS):
            last = self._last_record(key.public_key())
            record = seal(key, AuditRecord.hashed(
                seq=last.seq + 1 if last else 1, prev=last.hash if last else GENESIS, at=_now(),
                event=event, actor=actor, model=model, digest=digest, details=details or {}))
            try:
                create_new(self.record_uri(record.seq), record.model_dump_json().encode())
            except FileExistsError:
                time.sleep(random.uniform(0, 0.01 * attempt))  # jitter: writers stop colliding
                continue
            head = seal(key, AuditHead(seq=record.seq, hash=record.hash, at=record.at,
                                       signature=""))
            create_new(self.head_uri(record.seq), head.model_dump_json().encode())
            if self.registry is not None and model:
                name, _, version = model.rpartition("/")
                self.registry.set_model_version_tag(name, version, HEAD_TAG, record.hash)
            return record
        raise AuditError(f"{self.uri}: could not append after {APPEND_ATTEMPTS} attempts; "
                         "other writers keep taking the next seq")

    def records(self) -> list[AuditRecord]:
        """Every record in file order, parsed (not verified: see `verify`)."""
        return [_read(uri, AuditRecord) for uri in _files(self.uri)]

    def verify(self, referenced: Iterable[str] = ()) -> list[AuditRecord]:
        """The records, once each is intact, signed by the log's key and chained to the one
        before it, the latest signed head names the last of them or one before, and every hash
        in `referenced` is one of them; AuditError naming the first record that is not."""
        head_uri, head = self._latest_head()  # before the records: a head follows its record
        files = _files(self.uri)
        public = self.keys.verifying_key() if files or head else None
        records = []
        for uri in files:
            record = _read(uri, AuditRecord)
            expected_seq = len(records) + 1
            where = f"record seq {record.seq} ({uri})"
            self._check_sealed(record, where, public)
            named_seq = int(RECORD_NAME.fullmatch(uri.rsplit("/", 1)[-1]).group(1))
            if named_seq != record.seq:
                raise AuditError(f"{where}: the file's name says seq {named_seq}: "
                                 "records were reordered or renamed")
            if record.seq != expected_seq:
                raise AuditError(f"{where}: expected seq {expected_seq}: record(s) "
                                 f"{expected_seq}..{record.seq - 1} were removed")
            previous_hash = records[-1].hash if records else GENESIS
            if record.prev != previous_hash:
                raise AuditError(f"{where}: prev {record.prev[:12]}… is not the previous "
                                 f"record's hash {previous_hash[:12]}…: a record before it was "
                                 "removed, replaced or reordered")
            records.append(record)
        self._check_head(head_uri, head, records, public)
        held = {r.hash for r in records}
        for wanted in referenced:
            if wanted not in held:
                raise AuditError(f"{self.uri}: hash {wanted[:12]}… is referenced but in no "
                                 f"record of the log ({len(records)} records): a record was "
                                 "removed or the chain rewritten")
        return records

    def _check_sealed(self, record: AuditRecord, where: str, public: Ed25519PublicKey) -> None:
        if record.computed_hash() != record.hash:
            raise AuditError(f"{where}: its content does not hash to its hash "
                             f"{record.hash[:12]}…: the record was edited")
        if not signature_holds(public, record):
            raise AuditError(f"{where}: its signature does not verify against the public key "
                             f"{self.keys.public}: the record was forged (unsigned, signed with "
                             "another key, or its hashes recomputed without the signing key)")

    def _check_head(self, head_uri: str | None, head: AuditHead | None,
                    records: list[AuditRecord], public: Ed25519PublicKey | None) -> None:
        """The latest signed head names the last record, or one before it (an appender between
        its record and its head, or one that stopped there: the records after are signed)."""
        if head is None:
            if records:
                raise AuditError(f"{self.heads_uri}: no signed head for the log's {len(records)} "
                                 "records: its end is anchored nowhere, so a removed tail "
                                 "could not be told (heads were deleted)")
            return
        if not signature_holds(public, head):
            raise AuditError(f"signed head {head_uri}: its signature does not verify against the "
                             f"public key {self.keys.public}: the head was forged")
        _check_not_truncated(head_uri, head, records[-1].seq if records else 0)
        named = records[head.seq - 1]
        if named.hash != head.hash:
            raise AuditError(f"record seq {head.seq} ({self.record_uri(head.seq)}): its hash "
                             f"{named.hash[:12]}… is not the {head.hash[:12]}… that the signed "
                             f"head {head_uri} names: the log was rewritten from there")

    def _latest_head(self) -> tuple[str | None, AuditHead | None]:
        heads = _files(self.heads_uri)
        return (heads[-1], _read(heads[-1], AuditHead)) if heads else (None, None)

    def _last_record(self, public: Ed25519PublicKey) -> AuditRecord | None:
        """The record to append after: never an edited or forged one, nor one before a removed
        tail (heads are listed first: a head is written after its record)."""
        head_uri, head = self._latest_head()
        names = _files(self.uri)
        last = _read(names[-1], AuditRecord) if names else None
        if last is not None:
            self._check_sealed(last, f"record seq {last.seq} ({names[-1]})", public)
        if head is not None:
            _check_not_truncated(head_uri, head, last.seq if last else 0)
        return last


def _check_not_truncated(head_uri: str, head: AuditHead, last_seq: int) -> None:
    if head.seq > last_seq:
        raise AuditError(f"signed head {head_uri} names record seq {head.seq} (hash "
                         f"{head.hash[:12]}…), but the log ends at seq {last_seq}: record(s) "
                         f"{last_seq + 1}..{head.seq} were removed from its tail")


def _files(folder: str) -> list[str]:
    """The JSON files named by seq in `folder`, in seq order (zero-padded names sort as numbers);
    anything else there (a writer's temporary file) is not part of it."""
    if not exists(folder):
        return []
    return [u for u in list_files(folder) if RECORD_NAME.fullmatch(u.rsplit("/", 1)[-1])]


def _read(uri: str, kind: type[Signed]) -> Signed:
    try:
        return kind.model_validate_json(read_bytes(uri))
    except ValidationError as e:
        raise AuditError(f"{uri}: not a valid {kind.__name__} ({e.error_count()} errors: "
                         f"{e.errors()[0]['loc']} {e.errors()[0]['msg']})") from None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def referenced_hashes(registry) -> list[str]:
    """The record hashes the registry's versions hold (HEAD_TAG, RECEIPT_TAG): each must be in
    the log, so a log rolled back to before one of them is refused."""
    return [v.tags[tag] for v in registry.search_model_versions()
            for tag in (HEAD_TAG, RECEIPT_TAG) if tag in v.tags]


def audit_keys(settings: Settings) -> AuditKeys:
    return AuditKeys(signing=settings.audit_signing_key, public=settings.audit_public_key,
                     create=settings.audit_signing_key_file is None)


def audit_log(settings: Settings | None = None, registry=None) -> AuditLog:
    settings = settings or get_settings()
    return AuditLog(settings.audit_uri, audit_keys(settings), registry)
