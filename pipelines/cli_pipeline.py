"""`longmix run` (the whole pipeline with a progress display per step and a summary), `flows
serve` (Prefect deployments), `ui` and `down` (the embedded default's background services)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from pipelines.cli_options import refuse

if TYPE_CHECKING:  # the CLI imports the pipeline (MLflow, Prefect) only when a command runs
    from pipelines.model_card import StageSummary
    from pipelines.steps import PipelineResult

console = Console()
flows_app = typer.Typer(help="Prefect deployments of the flows", no_args_is_help=True)

AFTER_TRAINING = ("record lineage", "evaluate", "gate", "model card", "approval", "deploy")
STYLE = {"waiting": "dim", "running": "yellow", "completed": "green", "cached": "cyan",
         "failed": "red"}


class StepBoard:
    """Each step's state and time, drawn as a table while the flow runs: a dataset and a training
    row per stage, then the steps after training."""

    def __init__(self, stages: list[str]):
        from pipelines.progress import dataset_step, train_step

        self.steps = [f(s) for s in stages for f in (dataset_step, train_step)] + list(AFTER_TRAINING)
        self.state = {s: "waiting" for s in self.steps}
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def on_event(self, step: str, event: str) -> None:
        if event == "running":
            self.started.setdefault(step, time.monotonic())
        elif step in self.started:
            self.seconds[step] = time.monotonic() - self.started[step]
        self.state[step] = event

    def table(self) -> Table:
        table = Table(title="longmix run", show_header=False)
        for step in self.steps:
            state = self.state[step]
            elapsed = self.seconds.get(step) or (time.monotonic() - self.started[step]
                                                 if step in self.started else None)
            table.add_row(step, f"[{STYLE[state]}]{state}[/]",
                          "" if elapsed is None else f"{elapsed:5.0f} s")
        return table


def start_services(settings) -> tuple[str, str]:
    from infra.services import ensure_mlflow_ui, ensure_prefect_server

    with console.status("starting Prefect's server and the MLflow UI"):
        return ensure_prefect_server(settings), ensure_mlflow_ui(settings)


def trigger(settings) -> str | None:
    """The run your own MLflow account makes to say that you triggered this flow."""
    from infra.mlflow_accounts import AccountError, record_trigger
    from infra.tracking import configure_mlflow

    try:
        return record_trigger(settings, configure_mlflow(settings))
    except AccountError as e:
        refuse(e, 2)


def quiet_consoles() -> None:
    """Prefect's and MLflow's own console lines would tear the progress table; Prefect's still
    reach its UI. Read when Prefect is first imported, which `run` does after this."""
    import os

    for handler in ("CONSOLE", "CONSOLE_FLOW_RUNS", "CONSOLE_TASK_RUNS"):
        os.environ.setdefault(f"PREFECT_LOGGING_HANDLERS_{handler}_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def run_pipeline(params, settings, api_url: str, board: StepBoard):
    """Run train_eval_deploy in a thread (the display owns the main one); its final state."""
    from infra.services import prefect_settings
    from pipelines import progress
    from pipelines.flows import train_eval_deploy

    outcome: dict = {}

    def target():
        with prefect_settings(settings, api_url):  # a context variable: set in this thread
            outcome["state"] = train_eval_deploy(params, return_state=True)

    remove = progress.listen(board.on_event)
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    with Live(board.table(), console=console, refresh_per_second=2) as live:
        while thread.is_alive():
            thread.join(timeout=0.5)
            live.update(board.table())
    remove()
    return outcome["state"]


def print_summary(result: PipelineResult, settings, api_url: str, mlflow_url: str,
                  flow_run_id: str, seconds: float) -> None:
    name, version = result.model.name_version
    table = Table(title=f"longmix run: done in {seconds / 60:.1f} min", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    lineage, gate, deployment = result.lineage, result.gate, result.deployment
    rows = [("model version", f"{name} version {version} (digest {result.model.digest[:12]}…)"),
            ("MLflow", f"{mlflow_url}/#/models/{name}/versions/{version}"),
            ("Prefect", f"{api_url.removesuffix('/api')}/runs/flow-run/{flow_run_id}")]
    rows += [(f"stage {s.stage}", stage_line(s)) for s in lineage.stages]
    chain = (f"{len(lineage.stages)} stages chained by checkpoint digest"
             if len(lineage.stages) > 1 else "1 stage")
    rows.append(("lineage", f"{chain} (longmix.lineage {lineage.digest[:12]}…); evaluated on "
                            f"{result.eval_dataset.name}"))
    rows += [(f"eval {k}", f"{v:.4g}") for k, v in result.evaluation.headline.items()]
    rows.append(("gate", f"{gate.status} ({gate.policy} policy, "
                         f"{sum(gate.checks.values())}/{len(gate.checks)} checks passed"
                         + "".join(f"; overridden: {o}" for o in gate.overrides) + ")"))
    approval = result.approval
    rows.append(("approval", f"approved by {approval.reviewer}"
                 + (" (the demo profiles' reviewer account)"
                    if approval.reviewer == "demo-reviewer" else "")
                 + f", triggered by {approval.triggered_by}"))
    if deployment:
        rows.append(("endpoint", f"{deployment.endpoint}/v1 (serving version "
                                 f"{deployment.version})"))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    if deployment:
        key = settings.serve_api_key_file or settings.home.resolve() / "serve" / "api_key"
        console.print("try it:", style="bold")
        console.print(f"curl -s {deployment.endpoint}/v1/completions -H \"Authorization: Bearer "
                      f"$(cat {key})\" -H 'Content-Type: application/json' -d '{{\"model\": "
                      f"\"{name}\", \"prompt\": \"def fibonacci(n):\", \"max_tokens\": 32}}'",
                      highlight=False, soft_wrap=True, markup=False)


def stage_line(stage: StageSummary) -> str:
    """A training stage in the summary: its dataset, steps, time and final loss."""
    line = (f"{stage.dataset} ({stage.seq_len} tokens a row), {stage.steps} steps"
            + ("" if stage.minutes is None else f", {stage.minutes:.1f} min"))
    return line + ("" if stage.loss is None else f", loss {stage.loss:.4g}")


def stage_steps(text: str, stages: list[str]) -> dict[str, int]:
    """--train-steps: "N" for every stage, or "STAGE=N,..." for some. The steps are checked by
    the stage's config; a stage the profile does not have is refused here, by name."""
    parts = [p.partition("=") for p in text.split(",")] if "=" in text else [
        (stage, "=", text) for stage in stages]
    steps = {stage.strip(): value.strip() for stage, _, value in parts}
    if not set(steps) <= set(stages) or not all(v.isdigit() for v in steps.values()):
        raise ValueError(f"--train-steps {text!r}: give N, or STAGE=N,...; this profile's "
                         f"stages: {', '.join(stages)}")
    return {stage: int(value) for stage, value in steps.items()}


def kept_stages(text: str, stages: list[str]) -> list[str]:
    """--stages: the profile's stages to run, "STAGE,..." in the profile's order; a stage the
    profile does not have is refused here, by name (the order's rules: TrainParams)."""
    kept = [stage.strip() for stage in text.split(",") if stage.strip()]
    if not kept or not set(kept) <= set(stages):
        raise ValueError(f"--stages {text!r}: give STAGE,...; this profile's stages: "
                         f"{', '.join(stages)}")
    return [stage for stage in stages if stage in kept]


def run(
    profile: str = typer.Option("demo", help="demo (the quickstart), capable (the model trained to "
                                "retrieve, about an hour) or tiny (seconds, for tests)"),
    stages: str | None = typer.Option(None, help="run only these of the profile's stages "
                                      "(STAGE,..., from pretrain, e.g. pretrain,long_context); "
                                      "the last one is registered; default: all of them"),
    wait: bool = typer.Option(False, help="wait for a reviewer's account instead of the demo "
                              "profiles' demo reviewer"),
    deploy: bool = typer.Option(True, help="deploy the approved version"),
    policy: str | None = typer.Option(None, help="gate policy (default: the profile's)"),
    train_steps: str | None = typer.Option(None, help="steps of every training stage (N), or of "
                                           "some (STAGE=N,...; the others as the profile's); "
                                           "default: the profile's"),
    safety_data: Path | None = typer.Option(None, help="a folder of the public safety sets "
                                            "(AdvBench, HarmBench, StrongREJECT, JailbreakBench, "
                                            "XSTest, ...) for the refusal and over-refusal evals"),
) -> None:
    """The whole pipeline — data → train → eval → gate → approval → deploy — on the embedded
    defaults, with a progress display per step and a summary at the end."""
    from pydantic import ValidationError

    from infra.settings import get_settings
    from pipelines.model_card import load_template
    from pipelines.params import get_profile

    try:
        base = get_profile(profile)
        promote = base.promote.model_dump()
        if wait:
            promote["reviewer"] = None
        if policy:
            promote["policy"] = policy
        train = base.train.model_dump()
        evals = base.eval.model_dump()
        if stages:
            kept = kept_stages(stages, [stage["stage"] for stage in train["stages"]])
            train["stages"] = [stage for stage in train["stages"] if stage["stage"] in kept]
            if evals["dataset_stage"] not in kept:
                evals["dataset_stage"] = None  # the longest kept stage's, as by default
        if train_steps:
            steps = stage_steps(train_steps, [stage["stage"] for stage in train["stages"]])
            train["stages"] = [{**stage, "steps": steps.get(stage["stage"], stage["steps"])}
                               for stage in train["stages"]]
        if safety_data:
            evals["safety_data"] = safety_data
        params = get_profile(profile, promote=promote, train=train, eval=evals,
                             deploy=deploy)
        settings = get_settings()
        load_template(settings.model_card_template)  # refused now, not after training
    except (ValueError, ValidationError) as e:
        refuse(e, 2)
    quiet_consoles()
    api_url, mlflow_url = start_services(settings)
    console.print(f"Prefect {api_url.removesuffix('/api')}   MLflow {mlflow_url}   "
                  f"state under {settings.home.resolve()}", highlight=False)
    params = params.model_copy(update={"trigger_run": trigger(settings)})
    started = time.monotonic()
    state = run_pipeline(params, settings, api_url,
                         board := StepBoard([s.stage for s in params.train.stages]))
    flow_run_id = str(state.state_details.flow_run_id)
    if not state.is_completed():
        failed = [s for s, v in board.state.items() if v == "failed"]
        console.print(f"[red]stopped at {', '.join(failed) or 'a step'}:[/] {state.message}",
                      highlight=False, soft_wrap=True)
        console.print(f"Prefect: {api_url.removesuffix('/api')}/runs/flow-run/{flow_run_id}")
        raise typer.Exit(1)
    print_summary(state.result(), settings, api_url, mlflow_url, flow_run_id,
                  time.monotonic() - started)


@flows_app.command("serve")
def flows_serve(
    cron: str | None = typer.Option(None, help="also run train_eval_deploy on this schedule"),
    profile: str = typer.Option("demo", help="the profile whose parameters the deployments default to"),
) -> None:
    """Serve the flows as Prefect deployments: trigger them from the Prefect UI or with
    `prefect deployment run 'train_eval_deploy/longmix'`. Runs until Ctrl-C."""
    import os

    from infra.services import prefect_env
    from infra.settings import get_settings
    from pipelines.params import get_profile

    settings = get_settings()
    api_url, _ = start_services(settings)
    # flow runs start in child processes, which read Prefect's settings from the environment
    os.environ.update(prefect_env(settings, api_url))
    from infra.services import prefect_settings
    from pipelines.flows import build_data, train_eval_deploy

    params = get_profile(profile)
    with prefect_settings(settings, api_url):
        from prefect import serve

        deployments = [
            train_eval_deploy.to_deployment("longmix", cron=cron,
                                            parameters={"params": params.model_dump(mode="json")}),
            build_data.to_deployment("longmix", parameters={"params": params.data.model_dump(mode="json")}),
        ]
        console.print(f"serving deployments at {api_url.removesuffix('/api')}/deployments; "
                      "trigger: prefect deployment run 'train_eval_deploy/longmix'")
        serve(*deployments)


def ui() -> None:
    """Start (or find) the MLflow UI and Prefect's server, and print their URLs."""
    from infra.settings import get_settings

    api_url, mlflow_url = start_services(get_settings())
    console.print(f"MLflow  {mlflow_url}\nPrefect {api_url.removesuffix('/api')}", highlight=False)


def down() -> None:
    """Stop what the embedded default left running: the serving host, Prefect, the MLflow UI."""
    from infra import services
    from infra.settings import get_settings
    from workers.serve.host import stop_host

    settings = get_settings()
    stopped = [name for name in ("prefect", "mlflow") if services.stop(settings, name)]
    if stop_host(settings):
        stopped.append("serving host")
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
