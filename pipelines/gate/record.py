"""The gate decision on the model version it judged: tags a reviewer sees in the MLflow UI
(`gate.status`, one `gate.check.<name>` per check) and the decision as a JSON artifact; a
reviewer's override recorded the same way, audited, and kept when the same report is judged
again under the same policy."""

from __future__ import annotations

from infra.registry import DIGEST_TAG
from pipelines.gate.decide import GateDecision, GateError, override


def check_tag(decision: GateDecision, name: str) -> str:
    result = next(c for c in decision.checks if c.name == name)
    overridden = next((o for o in decision.overrides if o.check == name), None)
    verdict = "pass" if result.passed else "fail"
    if overridden:
        verdict += f", overridden by {overridden.reviewer}: {overridden.reason}"
    return f"{verdict} ({result.metric} {result.threshold}; {result.reason})"


def record_decision(client, model_name: str, version: str, decision: GateDecision) -> str:
    """Tag the version with the decision and log it beside the version's run; return the
    artifact's path. Refused when the report judged another artifact than this version's."""
    mv = client.get_model_version(model_name, version)
    if mv.tags.get(DIGEST_TAG) != decision.model_digest:
        raise GateError(f"{model_name} version {version} has digest {mv.tags.get(DIGEST_TAG)}, "
                        f"the eval report judged {decision.model_digest}: evaluate this version")
    tags = {"gate.status": decision.status, "gate.policy": decision.policy,
            "gate.decision_digest": decision.digest(), "gate.report_digest": decision.report_digest,
            **{f"gate.check.{c.name}": check_tag(decision, c.name) for c in decision.checks}}
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    path = decision_artifact(model_name, version)
    client.log_text(mv.run_id, decision.model_dump_json(indent=2), path)
    return path


def decision_artifact(model_name: str, version: str) -> str:
    return f"gate/{model_name}-v{version}-decision.json"


def recorded_decision(client, model_name: str, version: str) -> GateDecision | None:
    """The decision last recorded on the version, if any."""
    import mlflow
    from mlflow.exceptions import MlflowException

    run_id = client.get_model_version(model_name, version).run_id
    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/{decision_artifact(model_name, version)}")
    except (MlflowException, OSError):
        return None
    return GateDecision.model_validate_json(text)


def carry_overrides(decision: GateDecision, recorded: GateDecision | None) -> GateDecision:
    """Overrides a reviewer gave on the same report under the same policy still hold when the gate
    runs again (a flow re-run); on another report or policy they do not."""
    if recorded is None or (recorded.report_digest, recorded.policy_digest) != (
            decision.report_digest, decision.policy_digest):
        return decision
    for given in recorded.overrides:
        decision = override(decision, given.check, given.reviewer, given.reason)
    return decision.model_copy(update={"overrides": recorded.overrides})


def override_check(client, model_name: str, version: str, check: str, reviewer: str, reason: str,
                   settings) -> GateDecision:
    """A named reviewer accepts one failed non-safety check of the recorded decision, with a
    reason: recorded on the version and in the audit log."""
    from pipelines.audit import audit_log

    recorded = recorded_decision(client, model_name, version)
    if recorded is None:
        raise GateError(f"{model_name} version {version} has no gate decision to override")
    decision = override(recorded, check, reviewer, reason)
    record_decision(client, model_name, version, decision)
    audit_log(settings, client).append(
        "override", reviewer, model=f"{model_name}/{version}", digest=decision.model_digest,
        details={"check": check, "reason": reason, "status": decision.status,
                 "decision_digest": decision.digest()})
    return decision
