"""The audit log: appended and verified on a local folder and on S3; an edited, removed or
reordered record, and a referenced hash that is not in the log, each refused with its reason."""

import json
import os
import threading

import pytest

from infra.settings import Settings
from pipelines.audit import GENESIS, AuditError, AuditLog, audit_log, seal


def fill(log: AuditLog, n: int = 3) -> list:
    return [log.append("deploy", "alice", model=f"m/{i}", digest=f"{i}" * 64,
                       details={"target": "local", "step": i}) for i in range(1, n + 1)]


def rewrite(path, **changes) -> None:
    """Edit a record in place, as someone with write access to the storage could."""
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, **changes}))


def test_appended_records_chain_and_verify(tmp_path):
    log = AuditLog(str(tmp_path / "audit"))
    assert log.records() == [] and log.verify() == []
    written = fill(log)
    assert [r.seq for r in written] == [1, 2, 3]
    assert written[0].prev == GENESIS and written[1].prev == written[0].hash
    assert sorted(os.listdir(tmp_path / "audit")) == ["00000001.json", "00000002.json",
                                                      "00000003.json"]
    assert log.verify(referenced=[written[2].hash]) == written == log.records()
    assert written[1].details == {"target": "local", "step": 2} and written[1].actor == "alice"


def test_concurrent_appenders_never_share_a_seq(tmp_path):
    log = AuditLog(str(tmp_path / "audit"))
    threads = [threading.Thread(target=fill, args=(AuditLog(log.uri), 5)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.seq for r in log.verify()] == list(range(1, 16))


def test_an_edited_record_is_refused(tmp_path):
    log = AuditLog(str(tmp_path))
    fill(log)
    rewrite(tmp_path / "00000002.json", actor="mallory")
    with pytest.raises(AuditError, match=r"record seq 2 \(.*00000002.json\).*was edited"):
        log.verify()
    (tmp_path / "00000002.json").write_text("{not json")
    with pytest.raises(AuditError, match="00000002.json: not a valid audit record"):
        log.verify()


def test_a_removed_record_is_refused(tmp_path):
    log = AuditLog(str(tmp_path))
    fill(log)
    (tmp_path / "00000002.json").unlink()
    with pytest.raises(AuditError, match=r"record seq 3 .*expected seq 2: record\(s\) 2..2 were "
                                         "removed"):
        log.verify()


def test_a_removed_record_renumbered_is_refused_by_its_prev(tmp_path):
    log = AuditLog(str(tmp_path))
    written = fill(log)
    (tmp_path / "00000002.json").unlink()
    # the third record re-sealed as the second: its own hash holds, its prev does not
    moved = seal(**{**written[2].model_dump(exclude={"hash"}), "seq": 2})
    (tmp_path / "00000003.json").unlink()
    (tmp_path / "00000002.json").write_text(moved.model_dump_json())
    with pytest.raises(AuditError, match="record seq 2 .*prev .* is not the previous record's "
                                         "hash"):
        log.verify()


def test_reordered_records_are_refused(tmp_path):
    log = AuditLog(str(tmp_path))
    fill(log)
    second, third = tmp_path / "00000002.json", tmp_path / "00000003.json"
    a, b = second.read_text(), third.read_text()
    second.write_text(b)
    third.write_text(a)
    with pytest.raises(AuditError, match=r"record seq 3 \(.*00000002.json\): the file's name says "
                                         "seq 2: records were reordered"):
        log.verify()


def test_a_referenced_hash_missing_from_the_log_is_refused(tmp_path):
    log = AuditLog(str(tmp_path))
    written = fill(log)
    (tmp_path / "00000003.json").unlink()  # the last record: the chain alone cannot tell
    assert log.verify() == written[:2]
    with pytest.raises(AuditError, match=rf"hash {written[2].hash[:12]}… is referenced but in no "
                                         "record"):
        log.verify(referenced=[written[0].hash, written[2].hash])


def test_appending_after_an_edited_last_record_is_refused(tmp_path):
    log = AuditLog(str(tmp_path))
    fill(log, 2)
    rewrite(tmp_path / "00000002.json", details={})
    with pytest.raises(AuditError, match="record seq 2 .*edited"):
        log.append("deploy", "alice")


def test_the_log_lives_at_the_settings_storage(tmp_path):
    log = audit_log(Settings(home=tmp_path / "home", storage_uri=str(tmp_path / "store")))
    assert log.uri == str(tmp_path / "store" / "audit")
    log.append("gate", "ci", model="m/1", details={"status": "passed"})
    assert [r.event for r in log.verify()] == ["gate"]


def test_the_same_log_on_s3(s3_server):
    bucket, client = s3_server["bucket"], s3_server["client"]
    log = AuditLog(f"s3://{bucket}/audit-test")
    assert log.verify() == []
    written = fill(log)
    assert log.verify(referenced=[written[-1].hash]) == written
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="audit-test/")["Contents"]]
    assert keys == [f"audit-test/0000000{i}.json" for i in (1, 2, 3)]

    body = json.loads(client.get_object(Bucket=bucket, Key=keys[0])["Body"].read())
    client.put_object(Bucket=bucket, Key=keys[0], Body=json.dumps({**body, "actor": "mallory"}))
    with pytest.raises(AuditError, match=r"record seq 1 \(s3://.*00000001.json\).*was edited"):
        log.verify()
    client.put_object(Bucket=bucket, Key=keys[0], Body=json.dumps(body))
    client.delete_object(Bucket=bucket, Key=keys[1])
    with pytest.raises(AuditError, match="expected seq 2"):
        log.verify()
