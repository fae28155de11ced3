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
from pipelines.approval import ApprovalReceipt
from pipelines.deploy import DeploymentRecord, VersionRef
from pipelines.lineage import Lineage, StageRecord, read_lineage, record_lineage
from pipelines.model_card import (StageSummary, attach_card, load_template, render_card,
                                  stage_summaries)
from pipelines.params import (DataParams, EvalParams, PromoteParams, StageParams, TrainParams,
                              dataset_out)
from workers.data.spec import CorpusSpec, TokenizerSpec


class DatasetRef(BaseModel):
    name: str
    manifest: str  # manifest.json URI
    digest: str
    seq_len: int  # tokens per packed row
    tokenizer_sha256: str

    @classmethod
    def of(cls, manifest: dict, uri: str) -> "DatasetRef":
        return cls(name=manifest["name"], manifest=uri, digest=manifest["digest"],
                   seq_len=manifest["seq_len"], tokenizer_sha256=manifest["tokenizer"]["sha256"])


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


class TrainedStage(BaseModel):
    """One stage of the chain: its parameters, the dataset it trained on, what it produced."""

    params: StageParams
    dataset: DatasetRef
    result: StageResult


class RecordedLineage(BaseModel):
    digest: str  # the longmix.lineage tag
    artifact: str  # the lineage JSON, beside the version's run
    stages: list[StageSummary]


class TrainedChain(BaseModel):
    """The stages in order, the last one registered, and the lineage recorded on its version."""

    stages: list[TrainedStage]
    lineage: RecordedLineage

    @property
    def model(self) -> StageResult:
        return self.stages[-1].result

    def eval_dataset(self, stage: str | None) -> DatasetRef:
        """The named stage's dataset; None: the one packed longest (on a tie, the earlier
        stage's: the general corpus rather than chat examples)."""
        if stage:
            return next(s.dataset for s in self.stages if s.params.stage == stage)
        return max(self.stages, key=lambda s: s.dataset.seq_len).dataset


class EvalRef(BaseModel):
    report: str  # report.json
    digest: str
    run_id: str | None
    headline: dict[str, float]  # a few figures for summaries


def dataset_spec(params: DataParams, tokenizer: TokenizerSpec | None) -> CorpusSpec:
    """The spec a dataset is built from; `tokenizer` (a later stage's: its init checkpoint's)
    replaces the spec's own, so the dataset's token ids mean what the model learnt."""
    from workers.data.spec import load_spec

    spec = load_spec(params.spec)
    return spec.model_copy(update={"tokenizer": tokenizer}) if tokenizer else spec


def data_identity(spec: dict) -> str:
    """What a dataset is built from, as a digest: its spec (as dumped to JSON), where a tokenizer
    pinned by its sha256 counts by that digest alone, not by the folder it is read from (a
    pretrain stage trained again, elsewhere, with the same tokenizer reuses the dataset)."""
    tokenizer = spec["tokenizer"]
    if tokenizer["sha256"]:
        spec = {**spec, "tokenizer": {**tokenizer, "path": None}}
    return json_digest(spec)


def data_key(params: DataParams, tokenizer: TokenizerSpec | None, storage_root: str) -> str:
    spec = dataset_spec(params, tokenizer)
    return json_digest([data_identity(spec.model_dump(mode="json")),
                        dataset_out(params, spec.name, storage_root)])


def checkpoint_tokenizer(previous: TrainedStage) -> TokenizerSpec:
    """The tokenizer of the previous stage's checkpoint, pinned by its digest: the tokenizer of
    the dataset that stage trained on, which its checkpoint carries (plan_stage checks it)."""
    from model.checkpoint import TOKENIZER

    return TokenizerSpec(path=f"{previous.result.checkpoint}/{TOKENIZER}",
                         sha256=previous.dataset.tokenizer_sha256)


def build_data_step(params: DataParams, tokenizer: TokenizerSpec | None,
                    settings: Settings) -> DatasetRef:
    """Build the dataset, or reuse the one at the output built from the same spec and tokenizer."""
    from infra.storage import exists, join
    from infra.tracking import configure_mlflow
    from workers.data.build import build_dataset
    from workers.data.manifest import MANIFEST_NAME, read_manifest
    from workers.data.report import log_dataset

    spec = dataset_spec(params, tokenizer)
    out = dataset_out(params, spec.name, settings.storage_root)
    manifest_uri = join(out, MANIFEST_NAME)
    if exists(manifest_uri):
        manifest = read_manifest(manifest_uri)
        if data_identity(manifest["spec"]) == data_identity(spec.model_dump(mode="json")):
            return DatasetRef.of(manifest, manifest_uri)
    result = build_dataset(spec, out, str(settings.cache_dir), overwrite=True)
    configure_mlflow(settings)
    log_dataset(result.manifest, result.manifest_uri)
    return DatasetRef.of(result.manifest, result.manifest_uri)


def stage_key(dataset: DatasetRef, stage: StageParams, train: TrainParams,
              previous: StageResult | None) -> str:
    # the dataset is named by its digest, not by the parameters it was built from
    return json_digest([dataset.digest, stage.model_dump(exclude={"data"}), train.preset,
                        train.workers, previous.digest if previous else None])


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
    from infra.registry import DIGEST_TAG
    from infra.tracking import configure_mlflow
    from workers.train.config import parse_train_config
    from workers.train.trainer import train as run_training

    key = stage_key(dataset, stage, train, previous)
    configure_mlflow(settings)
    if register and (found := registered_with_key(train.registered_model, key)):
        return StageResult(stage=stage.stage, checkpoint="", digest=found.tags[DIGEST_TAG],
                           run_id=found.run_id, registered=f"{found.name}/{found.version}")
    cfg = parse_train_config({
        **stage.model_dump(exclude={"data"}), "dataset": dataset.manifest, "preset": train.preset,
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


def champion_of(model: StageResult, settings: Settings) -> VersionRef | None:
    """The serving version that `model`'s change checks compare with (as the audit log, the
    deployment record and the `champion` alias agree); None when nothing serves yet or `model` is
    that version."""
    from infra.tracking import registry_client
    from pipelines.deploy import serving_champion

    name, version = model.name_version
    champion = serving_champion(registry_client(settings), settings, name)
    return None if champion is None or champion.version == version else champion


def evaluate_step(model: StageResult, dataset: DatasetRef, params: EvalParams,
                  champion: VersionRef | None, settings: Settings) -> EvalRef:
    """The eval suite on the registered version, against `champion` (champion_of) where there
    is one."""
    from workers.evals.suite import evaluate

    suite = params.suite_config()
    out = settings.home / "evals" / "reports" / f"{model.digest[:16]}-{suite.name}-{dataset.digest[:8]}"
    against = f"models:/{model.name_version[0]}/{champion.version}" if champion else None
    outcome = evaluate(model.model_uri, suite, manifest=dataset.manifest, out=out,
                       settings=settings, champion=against)
    values = {m.name: m.value for m in outcome.report.metrics}
    return EvalRef(report=str(outcome.path), digest=outcome.report.digest, run_id=outcome.run_id,
                   headline={k: values[k] for k in HEADLINE if k in values})


class GateFailed(RuntimeError):
    """The gate refused the model: it is not deployed. The message lists the failed checks."""


class GateResult(BaseModel):
    """A passed gate: the decision recorded on the version, check by check."""

    status: str
    policy: str
    decision_digest: str
    artifact: str  # the decision JSON, beside the version's run
    checks: dict[str, bool]  # check name → passed
    overrides: list[str]  # "check by reviewer: reason"


class Promotion(BaseModel):
    """What the promote flow did: the gate's decision, the card, the approval, the deployment
    (None when the flow was asked not to deploy)."""

    gate: GateResult
    model_card: str  # the card's artifact path
    approval: ApprovalReceipt
    deployment: DeploymentRecord | None


class PipelineResult(Promotion):
    """train_eval_deploy's result, read by `longmix run`'s summary."""

    model: StageResult
    lineage: RecordedLineage
    eval_dataset: DatasetRef
    evaluation: EvalRef


def gate_step(model: StageResult, evaluation: EvalRef, policy: str,
              settings: Settings) -> GateResult:
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
    audit_log(settings, client).append(
        "gate", "longmix-pipeline", model=model.registered, digest=model.digest,
        details={"status": decision.status, "policy": decision.policy,
                 "decision_digest": decision.digest(), "failed": failed})
    if decision.status != "passed":
        raise GateFailed(f"{model.registered} failed the {decision.policy} gate: {'; '.join(failed)}")
    return GateResult(status=decision.status, policy=decision.policy,
                      decision_digest=decision.digest(), artifact=artifact,
                      checks={c.name: c.passed for c in decision.checks},
                      overrides=[f"{o.check} by {o.reviewer}: {o.reason}"
                                 for o in decision.overrides])


def lineage_step(stages: list[TrainedStage], settings: Settings) -> RecordedLineage:
    """Record the chain on the version registered from the last stage."""
    from infra.tracking import registry_client

    client = registry_client(settings)
    lineage = Lineage(stages=tuple(
        StageRecord(stage=s.params.stage, dataset=s.dataset.name, dataset_digest=s.dataset.digest,
                    tokenizer_sha256=s.dataset.tokenizer_sha256, checkpoint_digest=s.result.digest,
                    init_digest=previous.result.digest if previous else None,
                    run_id=s.result.run_id, steps=s.params.steps, seq_len=s.dataset.seq_len)
        for previous, s in zip((None, *stages), stages)))
    name, version = stages[-1].result.name_version
    artifact = record_lineage(client, name, version, lineage)
    return RecordedLineage(digest=lineage.digest(), artifact=artifact,
                           stages=stage_summaries(client, lineage))


def model_card_step(chain: TrainedChain, evaluation: EvalRef, settings: Settings) -> str:
    """The model card, attached to the version; returns its artifact path."""
    from infra.tracking import registry_client
    from pipelines.gate.record import recorded_decision
    from workers.data.manifest import read_manifest
    from workers.evals.report import read_report

    client = registry_client(settings)
    model = chain.model
    name, version = model.name_version
    report = read_report(Path(evaluation.report))
    decision = recorded_decision(client, name, version)
    lineage = read_lineage(client, name, version)  # the card shows the chain the version records
    manifests = {s.dataset.digest: s.dataset.manifest for s in chain.stages}  # each dataset once
    figures = [f for e in report.evals.values() for f in e.figures]
    card = render_card(name, version, model.digest, lineage.digest(),
                       stage_summaries(client, lineage),
                       [read_manifest(uri) for uri in manifests.values()], report, decision, figures,
                       load_template(settings.model_card_template))
    return attach_card(client, name, version, card, Path(evaluation.report).parent, figures)


def triggered_by_step(trigger_run: str | None, settings: Settings) -> str:
    """Who triggered the flow, as MLflow authenticated them: the account that made the trigger
    run (the server accepts its tag only as that account's own name), else the flow's own."""
    from infra.mlflow_accounts import acting
    from infra.mlflow_auth import TRIGGER_TAG
    from infra.tracking import registry_client
    from pipelines.approval import ApprovalError

    if trigger_run is None:
        return acting(settings)[1]
    tags = registry_client(settings).get_run(trigger_run).data.tags
    if TRIGGER_TAG not in tags:
        raise ApprovalError(f"run {trigger_run} has no {TRIGGER_TAG} tag: it does not say who "
                            "triggered this flow")
    return tags[TRIGGER_TAG]


def approval_step(model: StageResult, params: PromoteParams, triggered_by: str,
                  settings: Settings) -> ApprovalReceipt:
    """Ask for a review and wait for it (the demo profiles' reviewer, an account of its own,
    answers at once); the receipt of a valid approval, or ApprovalError with the reason."""
    from infra.mlflow_accounts import demo_reviewer
    from infra.tracking import registry_client
    from pipelines.approval import request_review, review, wait_for_review

    client = registry_client(settings)
    name, version = model.name_version
    request_review(client, name, version, triggered_by, settings)
    if params.reviewer:
        as_reviewer, reviewer = demo_reviewer(settings)
        review(as_reviewer, name, version, "approve", reviewer,
               reason="unattended quickstart: approved by the demo reviewer's account")
    return wait_for_review(client, name, version, settings, timeout_s=params.approval_timeout_s)


def deploy_step(model: StageResult, params: PromoteParams, actor: str,
                settings: Settings) -> DeploymentRecord:
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
        return current  # a re-run: it serves already
    return deploy(client, name, version, settings, approved_digest=receipt.digest,
                    approval_hash=receipt.audit_hash, actor=actor, target=target,
                    smoke=params.smoke)
