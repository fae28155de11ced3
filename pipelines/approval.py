"""Reviewer approval of a model version that passed the gate: bound to the model's digest, by
someone other than the user who triggered the run (four eyes), optionally expiring.

One mechanism for the MLflow UI and the CLI: a tag on the registered model version.

    key:    longmix.review
    value:  approve <digest> by <reviewer>
            approve <digest> by <reviewer>: <reason>
            reject <digest> by <reviewer>: <reason>

`<digest>` is the version's `longmix.digest` tag (shown on the version's page), in full or its
first 12 or more hex characters; `<reviewer>` is one word (no spaces or colons), and must not be
the user in the version's `approval.requested_by` tag; a rejection needs a reason. In the MLflow
UI: open the model version, add the tag. From a shell: `longmix approve NAME/VERSION --reviewer
NAME` or `longmix reject NAME/VERSION --reviewer NAME --reason "..."` (both call `review`).

The flow calls `request_review` after the gate passed, then `wait_for_review`, which polls the
tag and checks it with `validate_review`. An accepted approval becomes a receipt (contract 6,
docs/contracts.md): a record in the audit log, the version tags `approval.status=approved`,
`approval.reviewer`, `approval.receipt=<the audit record's hash>`, and the artifact
`approval/<name>-v<version>-receipt.json` on the version's run. A deploy calls `check_approved`
just before deploying: the receipt must hold in the audit log, not be expired, and the
checkpoint's files must still hash to the approved digest (a changed artifact voids it), and the
version's model card (description and README) to the approved card's digest.

Other tags on the version: `approval.status` (pending, approved, rejected) and
`approval.requested_by` (who triggered the run).
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from infra.registry import DIGEST_TAG, download_checkpoint, registered_version
from infra.settings import Settings
from model.checkpoint import CheckpointError
from pipelines.audit import RECEIPT_TAG, AuditError, audit_log
from pipelines.model_card import CARD_DIGEST_TAG, card_path, current_card_digests

REVIEW_TAG = "longmix.review"
STATUS_TAG = "approval.status"  # pending, approved, rejected
REQUESTED_BY_TAG = "approval.requested_by"
REVIEWER_TAG = "approval.reviewer"
# what an approval approves beside the checkpoint: the gate's decision, the eval report and the
# model card (a card changed afterwards voids the approval)
EVIDENCE_TAGS = ("gate.decision_digest", "gate.report_digest", CARD_DIGEST_TAG)
REVIEW_FORMAT = ("'approve <digest> by <reviewer>' or 'reject <digest> by <reviewer>: <reason>' "
                 "(digest: the version's longmix.digest, at least its first 12 hex characters; "
                 "reviewer: one word)")
REVIEW_VALUE = re.compile(r"(?P<decision>approve|reject) (?P<digest>[0-9a-f]{12,64}) "
                          r"by (?P<reviewer>[^\s:]+)(?:: (?P<reason>\S.*))?", re.DOTALL)


class ApprovalError(ValueError):
    """The version may not be promoted; the message is the reason."""


class ApprovalTimeout(ApprovalError):
    """No review arrived in time; the message says what was awaited and how to give it."""


class Review(BaseModel):
    """A parsed `longmix.review` tag."""
    decision: Literal["approve", "reject"]
    digest: str  # the full digest or a prefix of it
    reviewer: str
    reason: str | None = None

    def names(self, digest: str) -> bool:
        return digest.startswith(self.digest)


class ApprovalReceipt(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["longmix.approval_receipt"] = "longmix.approval_receipt"
    model: str  # registered model name
    version: str
    digest: str  # the approved longmix.digest, in full
    reviewer: str
    reason: str | None = None
    triggered_by: str
    evidence: dict[str, str | None]  # the gate's decision, eval report and model card digests
    approved_at: datetime
    expires_at: datetime | None = None
    audit_hash: str  # the audit record that holds this receipt


def model_ref(name: str, version: str | int) -> str:
    return f"{name}/{version}"


def version_tags(client, name: str, version: str | int) -> dict[str, str]:
    return dict(client.get_model_version(name, str(version)).tags)


def version_digest(tags: dict[str, str], name: str, version: str | int) -> str:
    digest = tags.get(DIGEST_TAG)
    if not digest:
        raise ApprovalError(f"{model_ref(name, version)} has no {DIGEST_TAG} tag: not registered "
                            "by longmix, there is nothing to approve")
    return digest


def parse_review(value: str) -> Review:
    match = REVIEW_VALUE.fullmatch(value.strip())
    if match is None:
        raise ApprovalError(f"{REVIEW_TAG} = {value!r} is malformed: expected {REVIEW_FORMAT}")
    review = Review(**match.groupdict())
    if review.decision == "reject" and not review.reason:
        raise ApprovalError(f"{REVIEW_TAG} = {value!r}: a rejection needs a reason "
                            f"(expected {REVIEW_FORMAT})")
    return review


def request_review(client, name: str, version: str | int, triggered_by: str,
                   settings: Settings) -> None:
    """Mark a version that passed the gate as awaiting review by someone other than
    `triggered_by`, and audit the request."""
    tags = version_tags(client, name, version)
    if tags.get("gate.status") != "passed":
        raise ApprovalError(f"{model_ref(name, version)}: gate.status is "
                            f"{tags.get('gate.status')!r}, not 'passed': only a version that "
                            "passed the gate can be reviewed")
    digest = version_digest(tags, name, version)
    client.set_model_version_tag(name, str(version), STATUS_TAG, "pending")
    client.set_model_version_tag(name, str(version), REQUESTED_BY_TAG, triggered_by)
    audit_log(settings, client).append("review_requested", triggered_by,
                                       model=model_ref(name, version), digest=digest,
                                       details=evidence(tags))


def review(client, name: str, version: str | int, decision: Literal["approve", "reject"],
           reviewer: str, reason: str | None = None, digest: str | None = None) -> str:
    """Write the review tag, as a reviewer in the MLflow UI would; return its value. `digest`
    defaults to the version's own: pass the one you reviewed to bind the review to it."""
    digest = digest or version_digest(version_tags(client, name, version), name, version)
    value = f"{decision} {digest} by {reviewer}" + (f": {reason}" if reason else "")
    parse_review(value)  # the same rules as a tag typed in the UI
    client.set_model_version_tag(name, str(version), REVIEW_TAG, value)
    return value


def waiting_message(name: str, version: str | int, digest: str, triggered_by: str | None,
                    card: str | None = None) -> str:
    not_by = f" (not {triggered_by}: four eyes)" if triggered_by else ""
    read = (f"read its model card (the version's description; artifact {card_path(name, version)}"
            f", digest {card[:12]}…: an approval approves it as it is), then " if card else "")
    return (f"waiting for a reviewer{not_by} to approve or reject {model_ref(name, version)} "
            f"(digest {digest}): {read}in the MLflow UI set the version's tag {REVIEW_TAG} = "
            f"'approve {digest} by <your name>' (or 'reject {digest} by <your name>: <reason>'), "
            f"or run `longmix approve {model_ref(name, version)} --reviewer <your name>`")


def wait_for_review(client, name: str, version: str | int, settings: Settings, *,
                    timeout_s: float | None = None,
                    on_wait: Callable[[str], None] | None = None) -> ApprovalReceipt:
    """Poll the version's tags until a review is set, then validate it; ApprovalTimeout after
    `timeout_s` (default settings.approval_timeout_s)."""
    timeout_s = settings.approval_timeout_s if timeout_s is None else timeout_s
    tags = version_tags(client, name, version)
    message = waiting_message(name, version, version_digest(tags, name, version),
                              tags.get(REQUESTED_BY_TAG), tags.get(CARD_DIGEST_TAG))
    if on_wait:
        on_wait(message)
    deadline = time.monotonic() + timeout_s
    while REVIEW_TAG not in tags:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ApprovalTimeout(f"no review within {timeout_s:g}s; {message}")
        time.sleep(min(settings.approval_poll_s, remaining))
        tags = version_tags(client, name, version)
    return validate_review(client, name, version, settings, tags)


def validate_review(client, name: str, version: str | int, settings: Settings,
                    tags: dict[str, str] | None = None) -> ApprovalReceipt:
    """Accept the version's review tag as an approval (receipt audited, tagged and logged) or
    raise ApprovalError with the reason it is not one. `tags`: the version's, if just read."""
    version = str(version)
    tags = tags or version_tags(client, name, version)
    if REVIEW_TAG not in tags:
        raise ApprovalError(f"{model_ref(name, version)} has no {REVIEW_TAG} tag: not reviewed")
    found = parse_review(tags[REVIEW_TAG])
    digest = version_digest(tags, name, version)
    if found.decision == "reject":
        record_rejection(client, name, version, found, digest, settings)
        raise ApprovalError(f"rejected by {found.reviewer}: {found.reason}")
    triggered_by = requester(name, version, tags, settings)
    if found.reviewer.casefold() == triggered_by.casefold():
        raise ApprovalError(f"approver {found.reviewer} triggered the run (four eyes): another "
                            "reviewer must approve")
    if not found.names(digest):
        raise ApprovalError(f"approval names digest {found.digest[:12]}…, the version is now "
                            f"{digest[:12]}…")
    # the files are checked against the approved digest once, where it counts: check_approved,
    # just before a deploy (and the replica that loads them checks them again)
    return record_approval(client, name, version, found, digest, triggered_by, tags, settings)


def requester(name: str, version: str, tags: dict[str, str], settings: Settings) -> str:
    """Who triggered the run, as the audit log recorded the review request: the tag alone could
    be edited in the UI by the approver to pass the four-eyes check."""
    try:
        records = audit_log(settings).verify()
    except AuditError as e:
        raise ApprovalError(f"the audit log does not hold up: {e}") from e
    requests = [r for r in records
                if r.event == "review_requested" and r.model == model_ref(name, version)]
    if not requests:
        raise ApprovalError(f"no review of {model_ref(name, version)} was requested (no "
                            "review_requested audit record), so four eyes cannot be checked")
    triggered_by = requests[-1].actor
    if tags.get(REQUESTED_BY_TAG) != triggered_by:
        raise ApprovalError(f"{REQUESTED_BY_TAG} = {tags.get(REQUESTED_BY_TAG)!r}, but the audit "
                            f"log records the review as requested by {triggered_by!r}")
    return triggered_by


def evidence(tags: dict[str, str]) -> dict[str, str | None]:
    return {key: tags.get(key) for key in EVIDENCE_TAGS}


def record_rejection(client, name: str, version: str, found: Review, digest: str,
                     settings: Settings) -> None:
    audit_log(settings, client).append("rejection", found.reviewer,
                                       model=model_ref(name, version), digest=digest,
                                       details={"reason": found.reason})
    client.set_model_version_tag(name, version, STATUS_TAG, "rejected")


def record_approval(client, name: str, version: str, found: Review, digest: str,
                    triggered_by: str, tags: dict[str, str],
                    settings: Settings) -> ApprovalReceipt:
    approved_at = datetime.now(UTC)
    hours = settings.approval_valid_hours
    fields = {"model": name, "version": version, "digest": digest, "reviewer": found.reviewer,
              "reason": found.reason, "triggered_by": triggered_by, "evidence": evidence(tags),
              "approved_at": approved_at,
              "expires_at": approved_at + timedelta(hours=hours) if hours else None}
    details = ApprovalReceipt(**fields, audit_hash="").model_dump(mode="json",
                                                                  exclude={"audit_hash"})
    record = audit_log(settings, client).append("approval", found.reviewer,
                                                model=model_ref(name, version), digest=digest,
                                                details=details)
    receipt = ApprovalReceipt(**details, audit_hash=record.hash)
    for key, value in {STATUS_TAG: "approved", REVIEWER_TAG: found.reviewer,
                       RECEIPT_TAG: record.hash}.items():
        client.set_model_version_tag(name, version, key, value)
    client.log_text(client.get_model_version(name, version).run_id,
                    receipt.model_dump_json(indent=2), f"approval/{name}-v{version}-receipt.json")
    return receipt


def verify_artifact(name: str, version: str | int, digest: str, settings: Settings) -> None:
    """Re-download the version's checkpoint and hash every file against `digest`, from the
    registry at settings.tracking_uri (made the process's tracking URI, as fetch_checkpoint does:
    download_checkpoint reads the registry through it)."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    scratch = settings.home / "approval"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        try:
            download_checkpoint(f"models:/{name}/{version}", f"{tmp}/checkpoint",
                                expected_digest=digest)
        except CheckpointError as e:
            raise ApprovalError("the checkpoint's files no longer match the approved digest: "
                                f"{e}") from e


def check_approved(client, name: str, version: str | int,
                   settings: Settings) -> ApprovalReceipt:
    """The version's approval receipt, once it holds now: its audit record verified in the
    chain, not expired, the review tag unchanged, and the artifact still the approved one."""
    version = str(version)
    tags = version_tags(client, name, version)
    if tags.get(STATUS_TAG) != "approved" or RECEIPT_TAG not in tags:
        raise ApprovalError(f"{model_ref(name, version)} is not approved ({STATUS_TAG} = "
                            f"{tags.get(STATUS_TAG)!r})")
    receipt = audited_receipt(name, version, tags[RECEIPT_TAG], settings)
    current = tags.get(REVIEW_TAG)
    # a reviewer who changes their mind (reject, or the tag removed) withdraws the approval
    if current is None or parse_review(current).decision != "approve":
        raise ApprovalError(f"{REVIEW_TAG} changed since the approval by {receipt.reviewer}: "
                            f"now {current!r}")
    if receipt.expires_at and datetime.now(UTC) >= receipt.expires_at:
        raise ApprovalError(f"approval expired at {receipt.expires_at.isoformat()}")
    digest = version_digest(tags, name, version)
    if digest != receipt.digest:
        raise ApprovalError(f"approval names digest {receipt.digest[:12]}…, the version is now "
                            f"{digest[:12]}…")
    verify_card(client, name, version, receipt)
    verify_artifact(name, version, receipt.digest, settings)
    return receipt


def verify_card(client, name: str, version: str, receipt: ApprovalReceipt) -> None:
    """The model card the version shows (description and README) must be the one approved."""
    approved = receipt.evidence.get(CARD_DIGEST_TAG)
    if approved is None:  # approved without a card (a version registered outside the flow)
        return
    changed = [where for where, now in current_card_digests(client, name, version).items()
               if now != approved]
    if changed:
        raise ApprovalError(f"the model card changed since the approval by {receipt.reviewer} "
                            f"({' and '.join(changed)} no longer hash to the approved "
                            f"{approved[:12]}…): the approval was of the card as it was")


def approved_version(client, uri: str, settings: Settings) -> tuple[str, ApprovalReceipt]:
    """models:/NAME@ALIAS or models:/NAME/VERSION -> models:/NAME/VERSION and its approval
    receipt, as check_approved finds it now: an alias is resolved once, so what serves is the
    version that was checked, wherever the alias moves afterwards."""
    from mlflow.exceptions import MlflowException

    try:
        found = registered_version(uri) if uri.startswith("models:/") else None
    except ValueError:
        found = None
    except MlflowException as e:  # no such model, version or alias
        raise ApprovalError(f"{uri}: {e.message}") from e
    if found is None:
        raise ApprovalError(f"{uri}: only a registered version (models:/NAME@ALIAS or "
                            "models:/NAME/VERSION) has an approval; serve a folder or a logged "
                            "model with --unapproved, for development")
    version = str(found.version)
    return (f"models:/{found.name}/{version}",
            check_approved(client, found.name, version, settings))


def audited_receipt(name: str, version: str, receipt_hash: str,
                    settings: Settings) -> ApprovalReceipt:
    """The receipt as the audit log holds it (tags can be edited; the chain shows edits)."""
    try:
        records = audit_log(settings).verify(referenced=[receipt_hash])
    except AuditError as e:
        raise ApprovalError(f"the audit log does not hold up: {e}") from e
    record = next(r for r in records if r.hash == receipt_hash)
    if record.event != "approval" or record.model != model_ref(name, version):
        raise ApprovalError(f"{RECEIPT_TAG} names audit record seq {record.seq}, a "
                            f"{record.event!r} of {record.model}, not an approval of "
                            f"{model_ref(name, version)}")
    try:
        return ApprovalReceipt(**record.details, audit_hash=record.hash)
    except ValidationError as e:
        raise ApprovalError(f"audit record seq {record.seq} is not an approval receipt: {e}") from e
