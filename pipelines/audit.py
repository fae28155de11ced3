"""A hash-chained, append-only audit log in storage (contract 6, docs/contracts.md).

Every gate decision, review request, approval, rejection, override, deploy and rollback is one
record: one JSON object per record at `<audit_uri>/<seq:08d>.json`, never overwritten. Each
record carries `prev`, the previous record's hash (64 zeros for the first), and `hash`, the
sha256 of the canonical JSON (sorted keys, no spaces, UTF-8) of all its other fields. So:

- an edited record no longer hashes to its `hash`;
- a removed record leaves a gap in `seq` and a `prev` that names a missing hash;
- a reordered (swapped or renamed) record sits in a file whose name is not its `seq`;
- a removed *last* record, or a rewrite of the chain from some record on, leaves no trace in
  the log itself: it is caught by `verify(referenced=...)` with the hashes that others hold
  (an approval receipt's `approval.receipt` tag in MLflow names its record's hash).

Writes: a local record is written to a hidden temporary file and hard-linked into place, which
is atomic and exclusive: no reader sees half a record, and two writers never share a `seq` (the
loser re-reads the tail and appends after it). S3 has no exclusive create through pyarrow, so
there it is check-then-write: two writers racing for the same `seq` within one round-trip can
overwrite each other, and the lost record then shows up as a `prev` mismatch or a missing
referenced hash at the next `verify`. Run one promotion flow per audit log on S3.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from infra.digests import json_digest
from infra.settings import Settings, get_settings
from infra.storage import exists, is_s3, join, list_files, read_bytes, resolve, write_bytes

GENESIS = "0" * 64  # the `prev` of the first record
RECORD_NAME = re.compile(r"(\d{8})\.json")
APPEND_ATTEMPTS = 20  # another writer took our seq: re-read the tail and try the next one


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
    hash: str  # sha256 of the canonical JSON of every other field

    def computed_hash(self) -> str:
        return json_digest(self.model_dump(mode="json", exclude={"hash"}))


def seal(**fields: Any) -> AuditRecord:
    """A record with its hash computed; fields normalised through the model first so the hash
    covers exactly what is written (and read back)."""
    unsealed = AuditRecord.model_validate({**fields, "hash": ""})
    return unsealed.model_copy(update={"hash": unsealed.computed_hash()})


class AuditLog:
    def __init__(self, uri: str):
        self.uri = str(uri).rstrip("/")

    def record_uri(self, seq: int) -> str:
        return join(self.uri, f"{seq:08d}.json")

    def append(self, event: str, actor: str, *, model: str | None = None,
               digest: str | None = None, details: dict | None = None) -> AuditRecord:
        """Write the next record after the current last one and return it."""
        if not event or not actor:
            raise AuditError("an audit record needs an event and an actor")
        for attempt in range(APPEND_ATTEMPTS):
            last = self._last_record()
            record = seal(seq=last.seq + 1 if last else 1, prev=last.hash if last else GENESIS,
                          at=datetime.now(UTC).isoformat(timespec="microseconds"), event=event,
                          actor=actor, model=model, digest=digest, details=details or {})
            try:
                self._create(self.record_uri(record.seq), record.model_dump_json().encode())
                return record
            except FileExistsError:
                time.sleep(random.uniform(0, 0.01 * attempt))  # jitter: writers stop colliding
        raise AuditError(f"{self.uri}: could not append after {APPEND_ATTEMPTS} attempts; "
                         "other writers keep taking the next seq")

    def records(self) -> list[AuditRecord]:
        """Every record in file order, parsed (not verified: see `verify`)."""
        return [self._read(uri) for uri in self._files()]

    def verify(self, referenced: Iterable[str] = ()) -> list[AuditRecord]:
        """The records, once each is intact and chained to the one before it, and every hash in
        `referenced` is one of them; AuditError naming the first record that is not."""
        records = []
        for uri in self._files():
            record = self._read(uri)
            expected_seq = len(records) + 1
            where = f"record seq {record.seq} ({uri})"
            if record.computed_hash() != record.hash:
                raise AuditError(f"{where}: its content does not hash to its hash "
                                 f"{record.hash[:12]}…: the record was edited")
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
        held = {r.hash for r in records}
        for wanted in referenced:
            if wanted not in held:
                raise AuditError(f"{self.uri}: hash {wanted[:12]}… is referenced but in no "
                                 f"record of the log ({len(records)} records): a record was "
                                 "removed or the chain rewritten")
        return records

    def _files(self) -> list[str]:
        """The records' files in seq order (zero-padded names sort as numbers); anything else
        in the folder (a writer's temporary file) is not part of the log."""
        if not exists(self.uri):
            return []
        return [u for u in list_files(self.uri) if RECORD_NAME.fullmatch(u.rsplit("/", 1)[-1])]

    def _read(self, uri: str) -> AuditRecord:
        try:
            return AuditRecord.model_validate_json(read_bytes(uri))
        except ValidationError as e:
            raise AuditError(f"{uri}: not a valid audit record ({e.error_count()} errors: "
                             f"{e.errors()[0]['loc']} {e.errors()[0]['msg']})") from None

    def _last_record(self) -> AuditRecord | None:
        names = self._files()
        if not names:
            return None
        last = self._read(names[-1])
        if last.computed_hash() != last.hash:  # never chain onto an edited record
            raise AuditError(f"record seq {last.seq} ({names[-1]}): edited; run "
                             "`longmix audit verify` before appending")
        return last

    @staticmethod
    def _create(uri: str, data: bytes) -> None:
        """Create `uri` with `data`; FileExistsError if it is already there."""
        if is_s3(uri):
            if exists(uri):  # check-then-write: see the module docstring for the race
                raise FileExistsError(uri)
            write_bytes(uri, data)
            return
        _, path = resolve(uri)
        folder = Path(path).parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, staged = tempfile.mkstemp(prefix=f".{Path(path).name}.", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.link(staged, path)  # atomic and exclusive: FileExistsError if the seq is taken
        finally:
            os.unlink(staged)


def audit_log(settings: Settings | None = None) -> AuditLog:
    return AuditLog((settings or get_settings()).audit_uri)
