"""The Prefect flows: build_data, train, evaluate, promote, and train_eval_deploy composing them.

Each task calls one step of pipelines/steps.py (plain functions). Results are persisted as JSON
under cache keys made from the digests of the inputs, so a flow killed mid-way and run again
resumes: finished steps are read back, not repeated. Transient failures (storage, the tracking
store, Ray start-up) are retried with backoff; anything else stops the flow, and the failed step
and its reason are recorded in the Prefect UI and on the flow's MLflow run.
"""

from __future__ import annotations

import sqlite3

from prefect import flow, task
from prefect.runtime import flow_run as current_flow_run

from infra.digests import json_digest
from infra.settings import get_settings
from pipelines import progress
from pipelines.approval import ApprovalReceipt
from pipelines.deploy import DeploymentRecord, VersionRef
from pipelines.params import (DataParams, EvalParams, PipelineParams, PromoteParams, StageParams,
                              TrainParams)
from pipelines.steps import (DatasetRef, EvalRef, GateResult, PipelineResult, Promotion,
                             RecordedLineage, StageResult, TrainedChain, TrainedStage,
                             approval_step, build_data_step, champion_of, checkpoint_tokenizer,
                             data_key, deploy_step, evaluate_step, gate_step, lineage_step,
                             model_card_step, stage_key, train_stage_step, triggered_by_step)
from workers.data.spec import TokenizerSpec

FLOW_RUN_TAG = "longmix.prefect_flow_run"


# --- what a failure is, and where it is recorded -------------------------------------------

def transient(error: BaseException) -> bool:
    """Worth a retry: storage and network errors, a locked SQLite store, Ray not (yet) up."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, (OSError, TimeoutError, sqlite3.OperationalError)):
        return True  # includes StorageError, ConnectionError and httpx's transport errors
    if isinstance(error, MlflowException):
        return error.error_code in ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR",
                                    "REQUEST_LIMIT_EXCEEDED") or "database is locked" in str(error)
    return "Failed to connect to GCS" in str(error)


def retry_if_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except Exception as error:  # noqa: BLE001 - classified, not handled
        return transient(error)
    return False


def _flow_mlflow_run(root_id: str):
    import mlflow

    from infra.tracking import configure_mlflow

    configure_mlflow(get_settings())
    runs = mlflow.search_runs(filter_string=f"tags.`{FLOW_RUN_TAG}` = '{root_id}'",
                              max_results=1, output_format="list")
    return runs[0] if runs else None


def open_flow_run(flow, flow_run, state) -> None:
    """A top-level flow gets an MLflow run: its parameters, and later its outcome."""
    if flow_run.parent_task_run_id is not None:
        return  # a subflow: recorded on its root's run
    from mlflow import MlflowClient

    from infra.tracking import configure_mlflow

    experiment = configure_mlflow(get_settings())
    run = MlflowClient().create_run(experiment, run_name=f"flow {flow.name} ({flow_run.name})",
                                    tags={FLOW_RUN_TAG: str(flow_run.id), "longmix.flow": flow.name})
    MlflowClient().log_text(run.info.run_id, json_params(flow_run.parameters), "flow/parameters.json")


def json_params(parameters: dict) -> str:
    import json

    return json.dumps(parameters, indent=2, sort_keys=True, default=str)


def close_flow_run(flow, flow_run, state) -> None:
    if flow_run.parent_task_run_id is not None:
        return
    from mlflow import MlflowClient

    run = _flow_mlflow_run(str(flow_run.id))
    if run is not None:
        client = MlflowClient()
        client.set_tag(run.info.run_id, "longmix.flow_state", state.name)
        client.set_terminated(run.info.run_id, "FINISHED" if state.is_completed() else "FAILED")


def record_failed_step(task, task_run, state) -> None:
    """The step that stopped the flow, and why, on the flow's MLflow run."""
    from mlflow import MlflowClient

    run = _flow_mlflow_run(str(current_flow_run.root_flow_run_id))
    if run is not None:
        client = MlflowClient()
        client.set_tag(run.info.run_id, "longmix.failed_step", task_run.name)
        client.set_tag(run.info.run_id, "longmix.failure", (state.message or "")[:4000])


def step(name: str, cache_key_fn=None, retries: int = 2):
    """A pipeline task: persisted JSON results under `cache_key_fn`'s key, retried with backoff
    when the failure is transient, recorded on the flow's MLflow run when it is not."""
    return task(name=name, cache_key_fn=cache_key_fn, persist_result=cache_key_fn is not None,
                result_serializer="json", retries=retries, retry_delay_seconds=[5, 30, 120],
                retry_condition_fn=retry_if_transient, on_running=[progress.on_running],
                on_completion=[progress.on_completion],
                on_failure=[record_failed_step, progress.on_failure])


# --- tasks: one per step ---------------------------------------------------------------------

def _data_key(context, p) -> str:
    return "data-" + data_key(p["params"], p["tokenizer"], get_settings().storage_root)


def _stage_key(context, p) -> str:
    return "train-" + stage_key(p["dataset"], p["stage"], p["train"], p["previous"]) + \
        ("-registered" if p["register"] else "")


def _eval_key(context, p) -> str:
    champion_digest = p["champion"].digest if p["champion"] else None
    return "eval-" + json_digest([p["model"].digest, p["params"].suite_config().model_dump_json(),
                                  p["dataset"].digest, champion_digest])


@step("build dataset", cache_key_fn=_data_key)
def build_dataset(params: DataParams, tokenizer: TokenizerSpec | None = None) -> DatasetRef:
    return build_data_step(params, tokenizer, get_settings())


@step("train stage", cache_key_fn=_stage_key)
def train_stage(dataset: DatasetRef, stage: StageParams, train: TrainParams,
                previous: StageResult | None, register: bool) -> StageResult:
    return train_stage_step(dataset, stage, train, previous, register, get_settings())


@step("record lineage")
def record_lineage(stages: list[TrainedStage]) -> RecordedLineage:
    return lineage_step(stages, get_settings())


@step("evaluate", cache_key_fn=_eval_key)
def run_evals(model: StageResult, dataset: DatasetRef, params: EvalParams,
              champion: VersionRef | None) -> EvalRef:
    return evaluate_step(model, dataset, params, champion, get_settings())


@step("gate", retries=1)
def gate(model: StageResult, evaluation: EvalRef, policy: str) -> GateResult:
    return gate_step(model, evaluation, policy, get_settings())


@step("model card")
def model_card(chain: TrainedChain, evaluation: EvalRef) -> str:
    return model_card_step(chain, evaluation, get_settings())


@step("approval", retries=0)
def approval(model: StageResult, params: PromoteParams, triggered_by: str) -> ApprovalReceipt:
    return approval_step(model, params, triggered_by, get_settings())


@step("deploy", retries=0)
def deploy(model: StageResult, params: PromoteParams, actor: str) -> DeploymentRecord:
    return deploy_step(model, params, actor, get_settings())


# --- flows: the runbook ----------------------------------------------------------------------

HOOKS = {"on_running": [open_flow_run], "on_completion": [close_flow_run],
         "on_failure": [close_flow_run], "on_crashed": [close_flow_run]}


@flow(name="build_data", **HOOKS)
def build_data(params: DataParams = DataParams()) -> DatasetRef:
    """Preprocess the corpus with Ray Data into packed shards and a manifest."""
    return build_dataset(params)


@flow(name="train", **HOOKS)
def train(data: DataParams, params: TrainParams) -> TrainedChain:
    """Train the stages in order, each on its own dataset (`data` where it names none) from the
    previous stage's weights; register the last and record the chain on its version."""
    first_data = params.stages[0].data or data
    stages: list[TrainedStage] = []
    for i, stage in enumerate(params.stages):
        stage_data = stage.data or data
        previous = stages[-1] if stages else None
        # a later stage's dataset is tokenized with the checkpoint it starts from, so its token
        # ids mean what the model learnt; the first stage's dataset already is (it made it)
        tokenizer = None if stage_data == first_data else checkpoint_tokenizer(previous)
        dataset = build_dataset.with_options(name=progress.dataset_step(stage.stage))(
            stage_data, tokenizer)
        result = train_stage.with_options(name=progress.train_step(stage.stage))(
            dataset, stage, params, previous.result if previous else None,
            register=i == len(params.stages) - 1)
        stages.append(TrainedStage(params=stage, dataset=dataset, result=result))
    return TrainedChain(stages=stages, lineage=record_lineage(stages))


@flow(name="evaluate", **HOOKS)
def evaluate(model: StageResult, dataset: DatasetRef, params: EvalParams = EvalParams()) -> EvalRef:
    """Long-context and safety evals of the registered version, against the version that serves
    (found once: the cache key and the evals compare with the same one)."""
    return run_evals(model, dataset, params, champion_of(model, get_settings()))


@flow(name="promote", **HOOKS)
def promote(chain: TrainedChain, evaluation: EvalRef, params: PromoteParams, triggered_by: str,
            deploy_model: bool = True) -> Promotion:
    """Gate → model card → a reviewer's approval → blue/green deploy."""
    model = chain.model
    decision = gate(model, evaluation, params.policy)
    card = model_card(chain, evaluation)
    receipt = approval(model, params, triggered_by)
    deployment = deploy(model, params, triggered_by) if deploy_model else None
    return Promotion(gate=decision, model_card=card, approval=receipt, deployment=deployment)


@flow(name="train_eval_deploy", **HOOKS)
def train_eval_deploy(params: PipelineParams) -> PipelineResult:
    """The whole pipeline: data → train, stage by stage → eval → gate → approval → deploy."""
    triggered_by = triggered_by_step(params.trigger_run, get_settings())
    chain = train(params.data, params.train)
    dataset = chain.eval_dataset(params.eval.dataset_stage)
    evaluation = evaluate(chain.model, dataset, params.eval)
    promotion = promote(chain, evaluation, params.promote, triggered_by,
                        deploy_model=params.deploy)
    return PipelineResult(model=chain.model, lineage=chain.lineage, eval_dataset=dataset,
                          evaluation=evaluation, **dict(promotion))
