"""The audit log: appended and verified on a local folder and on S3; each attack of someone who
can write the storage but does not hold the signing key (a forged record, a rewritten actor, a
removed record in the middle or at the tail, a reordered record) refused with its reason, and two
processes appending to one S3 log at once never taking the same seq."""

import json
import multiprocessing
import os
import stat
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from infra.settings import Settings
from pipelines.audit import (GENESIS, AuditError, AuditHead, AuditKeys, AuditLog, AuditRecord,
                             audit_log, referenced_hashes, seal, sign)

RACE_APPENDS = 8  # per process: enough that the two collide on a seq many times


@pytest.fixture
def keys(tmp_path) -> AuditKeys:
    """The embedded default's key pair, made at first use."""
    return AuditKeys(signing=tmp_path / "keys" / "audit.key",
                     public=tmp_path / "keys" / "audit.pub", create=True)


@pytest.fixture
def log(tmp_path, keys) -> AuditLog:
    return AuditLog(str(tmp_path / "audit"), keys)


def fill(log: AuditLog, n: int = 3) -> list:
    return [log.append("deploy", "alice", model=f"m/{i}", digest=f"{i}" * 64,
                       details={"target": "local", "step": i}) for i in range(1, n + 1)]


def rewrite(uri: str, **changes) -> None:
    """Edit a record in place, as someone with write access to the storage could."""
    path = Path(uri)
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def forge(uri: str, **fields) -> None:
    """Write a well-formed record, its hash recomputed, signed with a key that is not the log's:
    all that someone with write access to the storage but without the signing key can do."""
    Path(uri).write_text(seal(Ed25519PrivateKey.generate(), AuditRecord.hashed(**fields))
                         .model_dump_json())


def test_appended_records_chain_sign_and_verify(tmp_path, keys, log):
    assert log.records() == [] and log.verify() == []
    written = fill(log)
    assert [r.seq for r in written] == [1, 2, 3]
    assert written[0].prev == GENESIS and written[1].prev == written[0].hash
    assert sorted(os.listdir(tmp_path / "audit")) == ["00000001.json", "00000002.json",
                                                      "00000003.json"]
    # the signed head of each append, beside the log
    assert sorted(os.listdir(tmp_path / "audit-heads")) == sorted(os.listdir(tmp_path / "audit"))
    assert log.verify(referenced=[written[2].hash]) == written == log.records()
    assert written[1].details == {"target": "local", "step": 2} and written[1].actor == "alice"
    assert stat.S_IMODE(keys.signing.stat().st_mode) == 0o600  # only its owner reads the key
    assert stat.S_IMODE(keys.public.stat().st_mode) == 0o644
    assert stat.S_IMODE(keys.signing.parent.stat().st_mode) == 0o700


def test_concurrent_appenders_never_share_a_seq(log):
    threads = [threading.Thread(target=fill, args=(AuditLog(log.uri, log.keys), 5))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.seq for r in log.verify()] == list(range(1, 16))


def test_an_edited_record_is_refused(log):
    fill(log)
    rewrite(log.record_uri(2), actor="mallory")
    with pytest.raises(AuditError, match=r"record seq 2 \(.*00000002.json\).*was edited"):
        log.verify()
    Path(log.record_uri(2)).write_text("{not json")
    with pytest.raises(AuditError, match="00000002.json: not a valid AuditRecord"):
        log.verify()


def test_a_rewritten_requester_with_recomputed_hashes_is_refused_as_forged(log):
    log.append("review_requested", "alice", model="m/1")
    approval = log.append("approval", "bob", model="m/1")
    requested = log.records()[0]
    # mallory rewrites who asked, so that she may approve her own run: the hash holds again
    forge(log.record_uri(1), **{**requested.model_dump(exclude={"hash", "signature"}),
                                "actor": "mallory"})
    with pytest.raises(AuditError, match=r"record seq 1 \(.*00000001.json\): its signature does "
                                         r"not verify against the public key .*audit.pub: the "
                                         "record was forged"):
        log.verify(referenced=[approval.hash])


def test_a_forged_appended_record_is_refused(log):
    last = fill(log)[-1]
    approval = {"seq": 4, "prev": last.hash, "at": last.at, "event": "approval",
                "actor": "bob", "model": "m/9", "digest": "9" * 64}
    forge(log.record_uri(4), **approval)
    with pytest.raises(AuditError, match=r"record seq 4 \(.*00000004.json\): its signature does "
                                         "not verify.*forged"):
        log.verify()
    unsigned = AuditRecord.hashed(**approval)
    Path(log.record_uri(4)).write_text(unsigned.model_dump_json())
    with pytest.raises(AuditError, match="record seq 4 .*signature does not verify.*forged"):
        log.verify()
    Path(log.record_uri(4)).write_text(unsigned.model_dump_json(exclude={"signature"}))
    with pytest.raises(AuditError, match=r"00000004.json: not a valid AuditRecord .*'signature'.*"
                                         "Field required"):
        log.verify()


def test_a_removed_record_is_refused(tmp_path, log):
    fill(log)
    (tmp_path / "audit" / "00000002.json").unlink()
    with pytest.raises(AuditError, match=r"record seq 3 .*expected seq 2: record\(s\) 2..2 were "
                                         "removed"):
        log.verify()


def test_a_removed_record_renumbered_is_refused_by_its_prev(tmp_path, keys, log):
    written = fill(log)
    (tmp_path / "audit" / "00000002.json").unlink()
    # the third record re-sealed as the second, even with the log's own key: its prev does not hold
    moved = seal(keys.signing_key(), AuditRecord.hashed(
        **{**written[2].model_dump(exclude={"hash", "signature"}), "seq": 2}))
    (tmp_path / "audit" / "00000003.json").unlink()
    (tmp_path / "audit" / "00000002.json").write_text(moved.model_dump_json())
    with pytest.raises(AuditError, match="record seq 2 .*prev .* is not the previous record's "
                                         "hash"):
        log.verify()


def test_a_removed_tail_record_is_named_by_the_signed_head(tmp_path, log):
    fill(log)
    (tmp_path / "audit" / "00000003.json").unlink()
    (tmp_path / "audit" / "00000002.json").unlink()
    with pytest.raises(AuditError, match=r"signed head .*audit-heads/00000003.json names record "
                                         r"seq 3 .*, but the log ends at seq 1: record\(s\) 2..3 "
                                         "were removed from its tail"):
        log.verify()
    with pytest.raises(AuditError, match="removed from its tail"):  # nor is the gap written over
        log.append("deploy", "alice")


def test_removed_or_forged_heads_are_refused(tmp_path, log):
    fill(log)
    heads = tmp_path / "audit-heads"
    tail = AuditHead.model_validate_json((heads / "00000003.json").read_text())
    for head in heads.iterdir():
        head.unlink()
    with pytest.raises(AuditError, match=r"audit-heads: no signed head for the log's 3 records: "
                                         "its end is anchored nowhere"):
        log.verify()
    forged = tail.model_copy(update={"signature": sign(Ed25519PrivateKey.generate(),
                                                       tail.signed_text())})
    (heads / "00000003.json").write_text(forged.model_dump_json())
    with pytest.raises(AuditError, match=r"signed head .*00000003.json: its signature does not "
                                         "verify .*: the head was forged"):
        log.verify()


def test_reordered_records_are_refused(tmp_path, log):
    fill(log)
    second, third = tmp_path / "audit" / "00000002.json", tmp_path / "audit" / "00000003.json"
    a, b = second.read_text(), third.read_text()
    second.write_text(b)
    third.write_text(a)
    with pytest.raises(AuditError, match=r"record seq 3 \(.*00000002.json\): the file's name says "
                                         "seq 2: records were reordered"):
        log.verify()


class Registry:
    """The two calls the log makes of an MLflow client, on version tags held in memory."""

    def __init__(self):
        self.tags: dict[tuple[str, str], dict[str, str]] = {}

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.tags.setdefault((name, version), {})[key] = value

    def search_model_versions(self) -> list:
        return [SimpleNamespace(tags=tags) for tags in self.tags.values()]


def test_a_rolled_back_storage_is_refused_by_the_hashes_the_registry_holds(tmp_path, keys):
    registry = Registry()
    log = AuditLog(str(tmp_path / "audit"), keys, registry)
    written = fill(log)
    log.append("approval", "bob", model="m/1")
    registry.set_model_version_tag("m", "1", "approval.receipt", written[0].hash)
    assert registry.tags[("m", "3")] == {"audit.head": written[2].hash}
    assert sorted(referenced_hashes(registry)) == sorted([log.records()[3].hash, written[1].hash,
                                                          written[2].hash, written[0].hash])
    # the last two records and their heads removed: the storage as it was two appends earlier
    for seq in (3, 4):
        (tmp_path / "audit" / f"{seq:08d}.json").unlink()
        (tmp_path / "audit-heads" / f"{seq:08d}.json").unlink()
    assert log.verify() == written[:2]  # the storage alone cannot tell
    with pytest.raises(AuditError, match=r"hash \w{12}… is referenced but in no record of the "
                                         r"log \(2 records\): a record was removed"):
        log.verify(referenced=referenced_hashes(registry))


def test_appending_after_an_edited_or_forged_last_record_is_refused(log):
    fill(log, 2)
    rewrite(log.record_uri(2), details={})
    with pytest.raises(AuditError, match="record seq 2 .*edited"):
        log.append("deploy", "alice")
    # the same edit, its hash recomputed and signed without the log's key
    forge(log.record_uri(2), **log.records()[1].model_dump(exclude={"hash", "signature"}))
    with pytest.raises(AuditError, match="record seq 2 .*forged"):
        log.append("deploy", "alice")


def test_keys_that_are_missing_or_not_a_pair_are_refused(tmp_path, keys, log):
    fill(log, 1)
    mounted = AuditKeys(signing=tmp_path / "mounted.key", public=keys.public)  # no create
    with pytest.raises(AuditError, match="no audit signing key at .*mounted.key: only the "
                                         "promotion step holds it"):
        AuditLog(log.uri, mounted).append("deploy", "mallory")
    another = AuditKeys(signing=tmp_path / "other" / "audit.key",
                        public=tmp_path / "other" / "audit.pub", create=True)
    another.signing_key()  # a pair of its own
    mismatched = AuditKeys(signing=another.signing, public=keys.public)
    with pytest.raises(AuditError, match=r"signing key .*other/audit.key is not the pair of the "
                                         r"public key .*keys/audit.pub"):
        AuditLog(log.uri, mismatched).append("deploy", "mallory")
    keys.public.unlink()
    with pytest.raises(AuditError, match=r"no audit public key at .*audit.pub, so no signature "
                                         "can be checked"):
        log.verify()


def test_the_log_lives_at_the_settings_storage(tmp_path):
    settings = Settings(home=tmp_path / "home", storage_uri=str(tmp_path / "store"))
    log = audit_log(settings)
    assert log.uri == str(tmp_path / "store" / "audit")
    log.append("gate", "ci", model="m/1", details={"status": "passed"})
    assert [r.event for r in log.verify()] == ["gate"]
    assert settings.audit_signing_key == (tmp_path / "home" / "keys" / "audit-signing.key")
    assert settings.audit_signing_key.is_file() and settings.audit_public_key.is_file()
    assert settings.audit_public_key.name == "audit-signing.pub"


def test_the_same_log_on_s3(s3_server, keys):
    bucket, client = s3_server["bucket"], s3_server["client"]
    log = AuditLog(f"s3://{bucket}/audit-test", keys)
    assert log.verify() == []
    written = fill(log)
    assert log.verify(referenced=[written[-1].hash]) == written

    def keys_of(prefix: str) -> list[str]:
        return [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]

    assert keys_of("audit-test/") == [f"audit-test/0000000{i}.json" for i in (1, 2, 3)]
    assert keys_of("audit-test-heads/") == [f"audit-test-heads/0000000{i}.json" for i in (1, 2, 3)]

    first = keys_of("audit-test/")[0]
    body = json.loads(client.get_object(Bucket=bucket, Key=first)["Body"].read())
    client.put_object(Bucket=bucket, Key=first, Body=json.dumps({**body, "actor": "mallory"}))
    with pytest.raises(AuditError, match=r"record seq 1 \(s3://.*00000001.json\).*was edited"):
        log.verify()
    client.put_object(Bucket=bucket, Key=first, Body=json.dumps(body))
    client.delete_object(Bucket=bucket, Key="audit-test/00000003.json")
    with pytest.raises(AuditError, match=r"names record seq 3 .*record\(s\) 3..3 were removed "
                                         "from its tail"):
        log.verify()


def append_in_another_process(uri: str, keys: AuditKeys, start, results) -> None:
    """One of the racing writers: waits for the other, then appends as fast as it can."""
    start.wait()
    results.put([(r.seq, r.hash) for r in fill(AuditLog(uri, keys), RACE_APPENDS)])


@pytest.mark.slow
def test_two_processes_appending_to_one_s3_log_never_share_a_seq(serial_s3_server, keys):
    uri = f"s3://{serial_s3_server['bucket']}/audit-race"
    keys.signing_key()  # made once before the race, as the promotion step's Secret is
    spawn = multiprocessing.get_context("spawn")  # two OS processes, each with its own clients
    start, results = spawn.Barrier(2), spawn.Queue()
    writers = [spawn.Process(target=append_in_another_process, args=(uri, keys, start, results))
               for _ in range(2)]
    for writer in writers:
        writer.start()
    appended = [pair for _ in writers for pair in results.get(timeout=300)]
    for writer in writers:
        writer.join(timeout=60)
        assert writer.exitcode == 0
    records = AuditLog(uri, keys).verify()
    assert sorted(seq for seq, _ in appended) == list(range(1, 2 * RACE_APPENDS + 1))
    assert sorted(appended) == [(r.seq, r.hash) for r in records]  # every append is in the log
