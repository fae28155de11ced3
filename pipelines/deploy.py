"""Blue/green deployment of an approved model version (docs/promotion.md; contract 7, docs/contracts.md).

The candidate starts beside the version that serves now and takes no traffic; it must pass a
smoke evaluation through its live OpenAI API (pipelines/smoke.py); only then does it take the
traffic, the previous version stop, and the `champion` alias move. A failed smoke check stops
the candidate, records a "rollback" in the audit log and raises: what served keeps serving.
Each deployment is recorded (DeploymentRecord) in storage (`<deployments_uri>/<name>/`, with
`current.json` the serving one) and as an artifact of the version's run.

Where versions run is a ServingTarget: local Ray Serve (workers/serve/local_target.py) or a
RayService on KubeRay (infra/k8s.py). The caller checks the approval before calling `deploy`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Literal, Protocol

from mlflow import MlflowClient
from pydantic import BaseModel

from infra.registry import DIGEST_TAG
from infra.settings import Settings
from infra.storage import exists, join, read_bytes, write_bytes
from pipelines.audit import audit_log
from pipelines.smoke import SmokeConfig, SmokeResult, smoke_check
from workers.serve.host import api_key, stop_host, with_api_key
from workers.serve.request_guard import load_api_keys
from workers.serve.local_target import LocalServeTarget

__all__ = ["ServingTarget", "LocalServeTarget", "DeploymentRecord", "DeployError", "SmokeConfig",
           "SmokeResult", "deploy", "rollback", "current_deployment", "target_for", "stop_host"]

CHAMPION = "champion"
STATUS_TAG = "deploy.status"  # serving | retired, on the model versions
MAX_RECORD_BYTES = 1024 ** 2


class ServingTarget(Protocol):
    kind: str  # "local" | "rayservice"

    def start_candidate(self, model_uri: str, version: str, digest: str) -> str:
        """Start models:/NAME/VERSION beside what serves now, taking no traffic, its replicas
        loading only files that hash to the approved `digest`; return once it is healthy, with
        the base URL where the smoke check reaches it (OpenAI API under /v1)."""

    def switch_traffic(self, version: str) -> str:
        """Send all traffic to the started candidate without failing a request; return the public
        base URL. If it raises, the traffic stays on (or is back on) the version serving before."""

    def stop(self, version: str) -> None:
        """Stop a candidate or a retired version; nothing if it is not running."""

    def serving_version(self) -> str | None:
        """The version that takes the traffic now; None if none does."""


class DeployError(RuntimeError):
    """The deploy or rollback did not happen; what served before keeps serving."""


class VersionRef(BaseModel):
    version: str
    digest: str  # its longmix.digest
    approval: str  # the audit hash of the approval it was deployed on


class DeploymentRecord(BaseModel):
    kind: Literal["longmix.deployment"] = "longmix.deployment"
    schema_version: int = 1
    action: Literal["deploy", "rollback"]
    model: str  # the registered model's name
    version: str
    digest: str  # longmix.digest of what serves
    target: str  # the ServingTarget's kind
    endpoint: str  # public base URL; the OpenAI API is under /v1
    since: str  # UTC, ISO 8601
    replaces: VersionRef | None  # what served before; None for a first deployment
    rollback_target: VersionRef | None  # what `rollback` returns to: the previous version
    smoke: SmokeResult
    approval: str  # the approval receipt's audit hash
    deployed_by: str


def target_for(settings: Settings) -> ServingTarget:
    if settings.deploy_target == "rayservice":
        from infra.k8s import RayServiceTarget  # kubernetes client only where it is used

        return RayServiceTarget(settings)
    return LocalServeTarget(settings)


def current_deployment(settings: Settings, name: str) -> DeploymentRecord | None:
    uri = join(settings.deployments_uri, name, "current.json")
    if not exists(uri):
        return None
    return DeploymentRecord.model_validate_json(read_bytes(uri, MAX_RECORD_BYTES))


def serving_champion(client: MlflowClient, settings: Settings, name: str) -> VersionRef | None:
    """The version that serves, with its digest and approval as the signed audit log last
    recorded a deploy (or rollback) of NAME; None before the first. The deployment record and the
    `champion` alias must agree with it: one removed, moved or rewritten fails closed, never
    passes as a first promotion (the change checks compare a candidate with this version)."""
    from mlflow.exceptions import MlflowException

    from pipelines.audit import AuditError

    try:
        records = audit_log(settings).verify()
    except AuditError as e:
        raise DeployError(f"the audit log does not hold up, so what serves is unknown: {e}") from e
    served = [r for r in records if r.event in ("deploy", "rollback") and "failed" not in r.details
              and (r.model or "").rsplit("/", 1)[0] == name]
    version = served[-1].model.rsplit("/", 1)[1] if served else None
    current = current_deployment(settings, name)
    try:
        alias = str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        alias = None
    where = (f"audit record seq {served[-1].seq} deployed version {version}" if served
             else "the audit log records no deployment")
    if (current.version if current else None) != version:
        raise DeployError(f"{name}: {where}, but the deployment record (current.json) names "
                          f"{'version ' + current.version if current else 'none'}")
    if alias != version:
        raise DeployError(f"{name}: {where}, but the `{CHAMPION}` alias points at "
                          f"{'version ' + alias if alias else 'nothing'}: set it back, or deploy "
                          "again")
    if not served:
        return None
    return VersionRef(version=version, digest=served[-1].digest,
                      approval=served[-1].details["approval"])


def deploy(client: MlflowClient, name: str, version: str | int, settings: Settings, *,
           approved_digest: str, approval_hash: str, actor: str,
           target: ServingTarget | None = None, smoke: SmokeConfig | None = None
           ) -> DeploymentRecord:
    """Blue/green: start the candidate, smoke-check it, then switch traffic to it."""
    return _blue_green(client, name, VersionRef(version=str(version), digest=approved_digest,
                                                approval=approval_hash),
                       settings, actor, target, smoke, "deploy", current_deployment(settings, name))


def rollback(client: MlflowClient, name: str, settings: Settings, *, actor: str,
             target: ServingTarget | None = None, smoke: SmokeConfig | None = None
             ) -> DeploymentRecord:
    """Return to the current deployment's rollback target through the same approval check as a
    deploy (the record in storage names a version; only its audited receipt approves it) and the
    same blue/green path and smoke check."""
    from pipelines.approval import ApprovalError, check_approved

    current = current_deployment(settings, name)
    if current is None or current.rollback_target is None:
        raise DeployError(f"{name}: no previous version to roll back to")
    version = current.rollback_target.version
    try:
        receipt = check_approved(client, name, version, settings)
    except ApprovalError as e:
        raise DeployError(f"{name}/{version}, the rollback target, is not approved now: {e}; "
                          f"{_kept(current.version)}") from e
    if receipt.digest != current.rollback_target.digest:
        raise DeployError(f"{name}/{version}: the rollback target names digest "
                          f"{current.rollback_target.digest[:12]}…, its approval "
                          f"{receipt.digest[:12]}…; {_kept(current.version)}")
    target_ref = VersionRef(version=version, digest=receipt.digest, approval=receipt.audit_hash)
    return _blue_green(client, name, target_ref, settings, actor, target, smoke, "rollback",
                       current)


def _blue_green(client: MlflowClient, name: str, candidate: VersionRef, settings: Settings,
                actor: str, target: ServingTarget | None, smoke: SmokeConfig | None,
                action: Literal["deploy", "rollback"],
                previous: DeploymentRecord | None) -> DeploymentRecord:
    version, model = candidate.version, f"{name}/{candidate.version}"
    registered = client.get_model_version(name, version)
    digest = registered.tags.get(DIGEST_TAG)
    if digest != candidate.digest:  # a changed artifact voids the approval
        raise DeployError(f"{model}: registered digest {str(digest)[:12]}… is not the approved "
                          f"{candidate.digest[:12]}…; the approval does not hold")
    # refused before anything starts (a local target starts the serving host)
    key = smoke_key(settings, target.kind if target else settings.deploy_target)
    target = target or target_for(settings)
    audit = audit_log(settings, client)
    serving = target.serving_version()
    if serving == version:
        raise DeployError(f"{model} already serves; nothing to switch to")
    try:
        url = target.start_candidate(f"models:/{name}/{version}", version, candidate.digest)
    except Exception as e:  # a replica that cannot start: nothing switched
        target.stop(version)
        _audit_failure(audit, actor, model, candidate, serving, [f"start: {e}"])
        raise DeployError(f"{model} did not start: {e}; {_kept(serving)}") from e
    result = smoke_check(url, key, candidate.digest, smoke)
    if not result.passed:
        target.stop(version)
        failed = [f"{c.name}: {c.reason}" for c in result.failed]
        _audit_failure(audit, actor, model, candidate, serving, failed)
        raise DeployError(f"{model} failed its smoke check ({'; '.join(failed)}); "
                          f"rolled back: {_kept(serving)}")

    switch_start = time.monotonic()
    try:
        endpoint = target.switch_traffic(version)
    except Exception as e:  # traffic stayed on (or went back to) the serving version
        target.stop(version)
        _audit_failure(audit, actor, model, candidate, serving, [f"switch: {e}"])
        raise DeployError(f"{model}: switching traffic failed: {e}; {_kept(serving)}") from e
    switch_s = time.monotonic() - switch_start
    if serving is not None:
        target.stop(serving)  # after the switch: its requests in flight drain first
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, STATUS_TAG, "serving")
    if serving is not None:
        client.set_model_version_tag(name, serving, STATUS_TAG, "retired")
    before = _ref(previous) if previous is not None and previous.version != version else None
    record = DeploymentRecord(
        action=action, model=name, version=version, digest=candidate.digest, target=target.kind,
        endpoint=endpoint, since=datetime.now(UTC).isoformat(),
        replaces=before if before is not None and before.version == serving else None,
        rollback_target=before, smoke=result, approval=candidate.approval, deployed_by=actor)
    _store(client, settings, record, registered.run_id)
    audit.append(action, actor, model=model, digest=candidate.digest, details={
        "endpoint": endpoint, "target": target.kind, "replaces": serving,
        "approval": candidate.approval, "smoke": "passed", "switch_s": round(switch_s, 3)})
    return record


def smoke_key(settings: Settings, target_kind: str) -> str:
    """The key the smoke check sends. Locally, one is made once when none is configured; a
    RayService's pods know only the keys of their Secret, which the settings must name too."""
    if target_kind == "local":
        return api_key(with_api_key(settings))
    keys = load_api_keys(settings.serve_api_keys, settings.serve_api_key_file)
    if not keys:
        raise DeployError("no serving API key configured: set LONGMIX_SERVE_API_KEY_FILE (or "
                          "_API_KEYS) to the key in the RayService's Secret")
    return keys[0]


def _ref(record: DeploymentRecord) -> VersionRef:
    return VersionRef(version=record.version, digest=record.digest, approval=record.approval)


def _kept(serving: str | None) -> str:
    return f"version {serving} keeps serving" if serving else "no version was serving"


def _audit_failure(audit, actor: str, model: str, candidate: VersionRef, serving: str | None,
                   failed: list[str]) -> None:
    audit.append("rollback", actor, model=model, digest=candidate.digest, details={
        "reason": "candidate failed", "failed": failed, "serving": serving})


def _store(client: MlflowClient, settings: Settings, record: DeploymentRecord,
           run_id: str | None) -> None:
    """The record in storage (one file per deployment, and current.json) and on the run that
    logged the version."""
    data = record.model_dump_json(indent=2)
    stamp = datetime.fromisoformat(record.since).strftime("%Y%m%dT%H%M%S%fZ")
    folder = join(settings.deployments_uri, record.model)
    write_bytes(join(folder, f"{stamp}-v{record.version}.json"), data.encode())
    write_bytes(join(folder, "current.json"), data.encode())
    if run_id:
        client.log_text(run_id, data, f"deployments/{stamp}-v{record.version}.json")
