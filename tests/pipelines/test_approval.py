"""Reviewer approval on a real MLflow registry (SQLite under tmp_path) with a tiny registered
checkpoint: the happy path and each refusal with its reason."""

import json
import threading
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from infra.registry import DIGEST_TAG, log_checkpoint_model
from infra.settings import Settings
from infra.tracking import configure_mlflow
from model.checkpoint import save_checkpoint
from model.config import get_preset
from model.transformer import Transformer
from pipelines.approval import (
    REVIEW_TAG,
    ApprovalError,
    ApprovalReceipt,
    ApprovalTimeout,
    check_approved,
    request_review,
    review,
    validate_review,
    wait_for_review,
)
from pipelines.audit import audit_log
from pipelines.model_card import attach_card, card_digest

NAME = "longmix-approval"
GATE_PASSED = {"gate.status": "passed", "gate.decision_digest": "a" * 64,
               "gate.report_digest": "b" * 64}


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tokenizer):
    """A tracking store with one tiny checkpoint logged as a model; tests add versions of it."""
    home = tmp_path_factory.mktemp("approval-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
        experiment_id = configure_mlflow(Settings(home=home))
        client = MlflowClient(Settings(home=home).tracking_uri)
        run_id = client.create_run(experiment_id).info.run_id
        folder = home / "checkpoint"
        save_checkpoint(folder, Transformer(get_preset("tiny", vocab_size=tokenizer.vocab_size)),
                        tokenizer)
        ref = log_checkpoint_model(folder, run_id, registered_name=NAME)
        yield {"home": home, "client": client, "run_id": run_id, "ref": ref, "folder": folder}
    mlflow.set_tracking_uri(None)


@pytest.fixture
def settings(registry, tmp_path):
    """The module's registry, this test's own audit log."""
    return Settings(home=registry["home"], storage_uri=str(tmp_path), user="alice",
                    approval_poll_s=0.05)


def new_version(registry, tags=GATE_PASSED) -> str:
    """A new version of the module's logged model, with the gate's tags."""
    ref = registry["ref"]
    version = mlflow.register_model(ref.model_uri, NAME,
                                    tags={DIGEST_TAG: ref.digest, **tags}).version
    return str(version)


def requested(registry, settings, tags=GATE_PASSED) -> str:
    version = new_version(registry, tags)
    request_review(registry["client"], NAME, version, "alice", settings)
    return version


def test_an_approval_by_another_reviewer_becomes_a_receipt(registry, settings, tmp_path):
    client, digest = registry["client"], registry["ref"].digest
    version = requested(registry, settings)
    assert client.get_model_version(NAME, version).tags["approval.status"] == "pending"
    value = review(client, NAME, version, "approve", "bob", digest=digest[:12])
    assert value == f"approve {digest[:12]} by bob"

    receipt = validate_review(client, NAME, version, settings)
    assert (receipt.kind, receipt.model, receipt.version, receipt.digest) == (
        "longmix.approval_receipt", NAME, version, digest)
    assert (receipt.reviewer, receipt.triggered_by, receipt.expires_at) == ("bob", "alice", None)
    assert receipt.evidence == {"gate.decision_digest": "a" * 64, "gate.report_digest": "b" * 64,
                                "model_card.digest": None}  # this version has no card

    tags = client.get_model_version(NAME, version).tags
    assert (tags["approval.status"], tags["approval.reviewer"]) == ("approved", "bob")
    assert tags["approval.receipt"] == receipt.audit_hash
    records = audit_log(settings).verify(referenced=[receipt.audit_hash])
    assert [(r.event, r.actor) for r in records] == [("review_requested", "alice"),
                                                     ("approval", "bob")]
    assert records[1].model == f"{NAME}/{version}" and records[1].digest == digest
    logged = client.download_artifacts(registry["run_id"],
                                       f"approval/{NAME}-v{version}-receipt.json", str(tmp_path))
    assert ApprovalReceipt.model_validate(json.loads(Path(logged).read_text())) == receipt

    assert check_approved(client, NAME, version, settings) == receipt


def test_the_user_who_triggered_the_run_cannot_approve(registry, settings):
    client = registry["client"]
    version = requested(registry, settings)
    review(client, NAME, version, "approve", "alice")
    with pytest.raises(ApprovalError, match=r"approver alice triggered the run \(four eyes\)"):
        validate_review(client, NAME, version, settings)
    # the requester's tag edited to dodge the rule: the audit log still knows who asked
    client.set_model_version_tag(NAME, version, "approval.requested_by", "carol")
    with pytest.raises(ApprovalError, match="audit log records the review as requested by 'alice'"):
        validate_review(client, NAME, version, settings)
    with pytest.raises(ApprovalError, match="is not approved"):
        check_approved(client, NAME, version, settings)


def test_a_rejection_is_refused_with_its_reason(registry, settings):
    client = registry["client"]
    version = requested(registry, settings)
    with pytest.raises(ApprovalError, match="a rejection needs a reason"):
        review(client, NAME, version, "reject", "bob")
    review(client, NAME, version, "reject", "bob", reason="NIAH below what we ship")
    with pytest.raises(ApprovalError, match="rejected by bob: NIAH below what we ship"):
        wait_for_review(client, NAME, version, settings, timeout_s=5)
    assert client.get_model_version(NAME, version).tags["approval.status"] == "rejected"
    assert audit_log(settings).verify()[-1].details == {"reason": "NIAH below what we ship"}


def test_an_approval_naming_another_digest_is_refused(registry, settings):
    client, digest = registry["client"], registry["ref"].digest
    version = requested(registry, settings)
    review(client, NAME, version, "approve", "bob", digest="0123456789ab" + "0" * 52)
    with pytest.raises(ApprovalError, match=rf"approval names digest 0123456789ab…, the version "
                                            rf"is now {digest[:12]}…"):
        validate_review(client, NAME, version, settings)


def test_a_malformed_review_tag_is_refused_naming_the_format(registry, settings):
    client, digest = registry["client"], registry["ref"].digest
    version = requested(registry, settings)
    for value in ("approved", f"approve {digest[:8]} by bob", f"approve {digest} by bob smith",
                  f"reject {digest} by bob"):
        client.set_model_version_tag(NAME, version, REVIEW_TAG, value)
        with pytest.raises(ApprovalError, match="expected 'approve <digest> by <reviewer>'"):
            validate_review(client, NAME, version, settings)


def test_a_version_that_did_not_pass_the_gate_is_not_reviewed(registry, settings):
    version = new_version(registry, {**GATE_PASSED, "gate.status": "failed"})
    with pytest.raises(ApprovalError, match="gate.status is 'failed', not 'passed'"):
        request_review(registry["client"], NAME, version, "alice", settings)
    assert audit_log(settings).records() == []

    unrequested = new_version(registry)
    review(registry["client"], NAME, unrequested, "approve", "bob")
    with pytest.raises(ApprovalError, match="no review of .* was requested"):
        validate_review(registry["client"], NAME, unrequested, settings)


def test_waiting_times_out_saying_what_it_waits_for(registry, settings):
    client, digest = registry["client"], registry["ref"].digest
    version = requested(registry, settings)
    messages = []
    with pytest.raises(ApprovalTimeout) as refused:
        wait_for_review(client, NAME, version, settings, timeout_s=0.2, on_wait=messages.append)
    said = str(refused.value)
    assert said.startswith("no review within 0.2s") and f"{NAME}/{version}" in said
    assert f"{REVIEW_TAG} = 'approve {digest} by <your name>'" in said
    assert f"`longmix approve {NAME}/{version} --reviewer <your name>`" in said
    assert "not alice" in said and len(messages) == 1 and messages[0] in said


def test_an_approval_given_while_waiting_is_picked_up(registry, settings):
    client = registry["client"]
    version = requested(registry, settings)

    def reviewer_in_the_ui():
        time.sleep(0.3)
        review(MlflowClient(settings.tracking_uri), NAME, version, "approve", "bob",
               reason="evals look good")

    thread = threading.Thread(target=reviewer_in_the_ui)
    thread.start()
    receipt = wait_for_review(client, NAME, version, settings, timeout_s=30)
    thread.join()
    assert (receipt.reviewer, receipt.reason) == ("bob", "evals look good")


def test_an_approval_expires(registry, settings):
    client = registry["client"]
    short = settings.model_copy(update={"approval_valid_hours": 1e-6})  # 3.6 ms
    version = requested(registry, short)
    review(client, NAME, version, "approve", "bob")
    receipt = validate_review(client, NAME, version, short)
    assert receipt.expires_at is not None
    time.sleep(0.01)
    with pytest.raises(ApprovalError, match=rf"approval expired at "
                                            rf"{receipt.expires_at.isoformat()[:19]}"):
        check_approved(client, NAME, version, short)


def test_a_changed_digest_tag_or_audit_record_voids_the_approval(registry, settings, tmp_path):
    client, digest = registry["client"], registry["ref"].digest
    version = requested(registry, settings)
    review(client, NAME, version, "approve", "bob")
    receipt = validate_review(client, NAME, version, settings)

    client.set_model_version_tag(NAME, version, DIGEST_TAG, "f" * 64)
    with pytest.raises(ApprovalError, match=rf"approval names digest {digest[:12]}…, the version "
                                            "is now ffffffffffff…"):
        check_approved(client, NAME, version, settings)
    client.set_model_version_tag(NAME, version, DIGEST_TAG, digest)
    assert check_approved(client, NAME, version, settings) == receipt

    record = tmp_path / "audit" / "00000002.json"
    edited = json.loads(record.read_text())
    edited["details"]["reviewer"] = "carol"
    record.write_text(json.dumps(edited))
    with pytest.raises(ApprovalError, match="audit log does not hold up: record seq 2 .*edited"):
        check_approved(client, NAME, version, settings)


def test_a_checkpoint_changed_after_approval_voids_it(registry, settings):
    client = registry["client"]
    # its own logged model: the module's shared one stays intact for the other tests
    ref = log_checkpoint_model(registry["folder"], registry["run_id"], registered_name=NAME)
    version = str(ref.version)
    client.set_model_version_tag(NAME, version, "gate.status", "passed")
    request_review(client, NAME, version, "alice", settings)
    review(client, NAME, version, "approve", "bob")
    validate_review(client, NAME, version, settings)

    stored = client.get_model_version_download_uri(NAME, version)
    weights = next(p for p in Path(stored).rglob("model.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ApprovalError, match="the checkpoint's files no longer match the approved "
                                            "digest: .*model.safetensors"):
        check_approved(client, NAME, version, settings)


def test_an_approval_approves_the_model_card_and_a_changed_card_voids_it(registry, settings,
                                                                        tmp_path):
    client = registry["client"]
    version = new_version(registry)
    card = f"# {NAME} version {version}\n\n## Intended use\n\nResearch.\n"
    attach_card(client, NAME, version, card, tmp_path, [])
    request_review(client, NAME, version, "alice", settings)
    waiting = []
    review(client, NAME, version, "approve", "bob")
    receipt = wait_for_review(client, NAME, version, settings, timeout_s=5, on_wait=waiting.append)
    assert f"read its model card (the version's description; artifact model_card/{NAME}-v" \
           f"{version}/README.md, digest {card_digest(card)[:12]}" in waiting[0]
    assert receipt.evidence["model_card.digest"] == card_digest(card)
    assert audit_log(settings).verify()[0].details["model_card.digest"] == card_digest(card)
    assert check_approved(client, NAME, version, settings) == receipt

    # the card edited in the UI after the approval (its risks section dropped, say)
    client.update_model_version(NAME, version, description=card.replace("Research.", "Any use."))
    with pytest.raises(ApprovalError, match=r"the model card changed since the approval by bob "
                                            r"\(description no longer hash"):
        check_approved(client, NAME, version, settings)
    client.update_model_version(NAME, version, description=card)  # as approved: holds again
    assert check_approved(client, NAME, version, settings) == receipt
