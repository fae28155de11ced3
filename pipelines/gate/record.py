"""The gate decision on the model version it judged: tags a reviewer sees in the MLflow UI
(`gate.status`, one `gate.check.<name>` per check) and the decision as a JSON artifact."""

from __future__ import annotations

from pipelines.gate.decide import GateDecision, GateError
from workers.train.mlflow_model import DIGEST_TAG


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
    path = f"gate/{model_name}-v{version}-decision.json"
    client.log_text(mv.run_id, decision.model_dump_json(indent=2), path)
    return path
