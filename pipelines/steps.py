"""The pipeline's steps as plain functions: each calls a worker with typed inputs and returns a
small typed result (JSON, so Prefect persists it without pickle). pipelines/flows.py wires them
into flows; tests call them alone.

Each step is also idempotent on its own, keyed by the digests of its inputs, so that a re-run
after a kill repeats nothing that finished, even where Prefect's cache has no record of it: a
dataset with the same spec is reused, and a stage whose registered version exists is not
trained again (nor registered twice)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from infra.digests import json_digest
from infra.settings import Settings
from pipelines.params import (DataParams, EvalParams, PromoteParams, StageParams, TrainParams,
                              dataset_out)


class DatasetRef(BaseModel):
    name: str
    manifest: str  # manifest.json URI
    digest: str


class StageResult(BaseModel):
    stage: str
    checkpoint: str  # the stage's final checkpoint folder (local)
    digest: str  # longmix.digest of the checkpoint
    run_id: str
    registered: str | None = None  # NAME/VERSION of the version registered from it

    @property
    def name_version(self) -> tuple[str, str]:
        name, version = self.registered.rsplit("/", 1)
        return name, version

    @property
    def model_uri(self) -> str:
        return f"models:/{self.registered}"


class EvalRef(BaseModel):
    report: str  # report.json
    digest: str
    run_id: str | None
    headline: dict[str, float]  # a few figures for summaries


def build_data_step(params: DataParams, settings: Settings) -> DatasetRef:
    """Build the dataset, or reuse the one at the output built from the same spec."""
    from infra.storage import exists, join
    from infra.tracking import configure_mlflow
    from workers.data.build import build_dataset
    from workers.data.manifest import MANIFEST_NAME, read_manifest
    from workers.data.report import log_dataset
    from workers.data.spec import load_spec

    spec = load_spec(params.spec)
    out = dataset_out(params, spec.name, settings.storage_root)
    manifest_uri = join(out, MANIFEST_NAME)
    if exists(manifest_uri):
        manifest = read_manifest(manifest_uri)
        if manifest["spec_sha256"] == spec.digest():
            return DatasetRef(name=manifest["name"], manifest=manifest_uri, digest=manifest["digest"])
    result = build_dataset(spec, out, str(settings.cache_dir), overwrite=True)
    configure_mlflow(settings)
    log_dataset(result.manifest, result.manifest_uri)
    return DatasetRef(name=result.manifest["name"], manifest=result.manifest_uri,
                      digest=result.manifest["digest"])


def stage_key(dataset: DatasetRef, stage: StageParams, train: TrainParams,
              previous: StageResult | None) -> str:
    return json_digest([dataset.digest, stage.model_dump(), train.preset, train.workers,
                        previous.digest if previous else None])


def registered_with_key(name: str, key: str):
    """The model version registered from a stage with these inputs, if any."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from workers.train.trainer import TRAIN_KEY_TAG

    try:
        found = MlflowClient().search_model_versions(
            f"name = '{name}' and tags.`{TRAIN_KEY_TAG}` = '{key}'")
    except MlflowException:  # the registered model does not exist yet
        return None
    return min(found, key=lambda v: int(v.version)) if found else None


def train_stage_step(dataset: DatasetRef, stage: StageParams, train: TrainParams,
                     previous: StageResult | None, register: bool, settings: Settings) -> StageResult:
    """Train one stage from the previous stage's checkpoint; register the version when asked."""
    from infra.tracking import configure_mlflow
    from workers.train.config import parse_train_config
    from workers.train.mlflow_model import DIGEST_TAG
    from workers.train.trainer import train as run_training

    key = stage_key(dataset, stage, train, previous)
    configure_mlflow(settings)
    if register and (found := registered_with_key(train.registered_model, key)):
        return StageResult(stage=stage.stage, checkpoint="", digest=found.tags[DIGEST_TAG],
                           run_id=found.run_id, registered=f"{found.name}/{found.version}")
    cfg = parse_train_config({
        **stage.model_dump(), "dataset": dataset.manifest, "preset": train.preset,
        "init_from": previous.checkpoint if previous else None, "workers": train.workers,
        "storage_path": f"{settings.storage_root}/train",
        "registered_model": train.registered_model if register else None})
    result = run_training(cfg, settings, key=key)
    return StageResult(stage=stage.stage, checkpoint=str(result.checkpoint),
                       digest=result.digest, run_id=result.run_id,
                       registered=f"{train.registered_model}/{result.model_version}"
                       if result.model_version else None)


HEADLINE = ("perplexity.text.nll", "niah_text.accuracy", "niah_text.rank_top1",
            "multi_needle.recall", "refusal.builtin.refusal_rate", "toxicity.builtin.toxic_rate",
            "injection.heldout.success_rate", "pii.exact_extraction_rate")


def evaluate_step(model: StageResult, dataset: DatasetRef, params: EvalParams,
                  settings: Settings) -> EvalRef:
    """The eval suite on the registered version, against the champion where there is one."""
    from workers.evals.suite import evaluate

    suite = params.suite_config()
    out = settings.home / "evals" / "reports" / f"{model.digest[:16]}-{suite.name}-{dataset.digest[:8]}"
    outcome = evaluate(model.model_uri, suite, manifest=dataset.manifest, out=out, settings=settings)
    values = {m.name: m.value for m in outcome.report.metrics}
    return EvalRef(report=str(outcome.path), digest=outcome.report.digest, run_id=outcome.run_id,
                   headline={k: values[k] for k in HEADLINE if k in values})


class GateFailed(RuntimeError):
    """The gate refused the model: it is not deployed. The message lists the failed checks."""


def gate_step(model: StageResult, evaluation: EvalRef, policy: str, settings: Settings) -> dict:
    """Decide and record the decision on the version; GateFailed when it fails."""
    from infra.tracking import registry_client
    from pipelines.audit import audit_log
    from pipelines.gate.decide import decide
    from pipelines.gate.policy import load_policy
    from pipelines.gate.record import carry_overrides, record_decision, recorded_decision
    from workers.evals.report import read_report

    client = registry_client(settings)
    name, version = model.name_version
    decision = carry_overrides(decide(read_report(Path(evaluation.report)), load_policy(policy)),
                               recorded_decision(client, name, version))
    artifact = record_decision(client, name, version, decision)
    overridden = {o.check for o in decision.overrides}
    failed = [f"{c.name} ({c.metric} {c.threshold}: {c.reason})" for c in decision.checks
              if not c.passed and c.name not in overridden]
    audit_log(settings).append("gate", "longmix-pipeline", model=model.registered,
                               digest=model.digest,
                               details={"status": decision.status, "policy": decision.policy,
                                        "decision_digest": decision.digest(), "failed": failed})
    if decision.status != "passed":
        raise GateFailed(f"{model.registered} failed the {decision.policy} gate: {'; '.join(failed)}")
    return {"status": decision.status, "policy": decision.policy,
            "decision_digest": decision.digest(), "artifact": artifact,
            "checks": {c.name: c.passed for c in decision.checks},
            "overrides": [f"{o.check} by {o.reviewer}: {o.reason}" for o in decision.overrides]}


def model_card_step(model: StageResult, dataset: DatasetRef, evaluation: EvalRef,
                    train_runs: list[str], settings: Settings) -> str:
    """The model card, attached to the version; returns its artifact path."""
    from infra.tracking import registry_client
    from pipelines.gate.record import recorded_decision
    from pipelines.model_card import attach_card, render_card, stage_summaries
    from workers.data.manifest import read_manifest
    from workers.evals.report import read_report

    client = registry_client(settings)
    name, version = model.name_version
    report = read_report(Path(evaluation.report))
    decision = recorded_decision(client, name, version)
    figures = [f for e in report.evals.values() for f in e.figures]
    card = render_card(name, version, model.digest, read_manifest(dataset.manifest),
                       stage_summaries(client, train_runs), report, decision, figures)
    return attach_card(client, name, version, card, Path(evaluation.report).parent, figures)


def approval_step(model: StageResult, params: PromoteParams, triggered_by: str,
                  settings: Settings) -> dict:
    """Ask for a review and wait for it (the quickstart's named demo reviewer answers at once);
    the receipt of a valid approval, or ApprovalError with the reason."""
    from infra.tracking import registry_client
    from pipelines.approval import request_review, review, wait_for_review

    client = registry_client(settings)
    name, version = model.name_version
    request_review(client, name, version, triggered_by, settings)
    if params.reviewer:
        review(client, name, version, "approve", params.reviewer,
               reason="unattended quickstart: approved by the named demo reviewer")
    receipt = wait_for_review(client, name, version, settings, timeout_s=params.approval_timeout_s)
    return receipt.model_dump(mode="json")


def deploy_step(model: StageResult, params: PromoteParams, actor: str, settings: Settings) -> dict:
    """Blue/green deploy of the approved version (the approval checked again just before)."""
    from infra.tracking import registry_client
    from pipelines.approval import check_approved
    from pipelines.deploy import current_deployment, deploy, target_for

    client = registry_client(settings)
    name, version = model.name_version
    receipt = check_approved(client, name, version, settings)
    target = target_for(settings)
    current = current_deployment(settings, name)
    if (target.serving_version() == version and current is not None
            and current.version == version and current.digest == receipt.digest):
        return current.model_dump(mode="json")  # a re-run: it serves already
    record = deploy(client, name, version, settings, approved_digest=receipt.digest,
                    approval_hash=receipt.audit_hash, actor=actor, target=target,
                    smoke=params.smoke)
    return record.model_dump(mode="json")
