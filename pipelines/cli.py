"""The `longmix` command line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines import cli_pipeline, cli_review
from pipelines.cli_options import options_from, refuse
from workers.train.config import TrainConfig

app = typer.Typer(help="longmix: train, evaluate and deploy sparse-MoE multimodal long-context models.",
                  no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Build and check datasets (Ray Data).", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()

BUILD_PHASES = 8  # listing, reading, dedup, tokenizer, synthetic, 3 splits (manifest closes)


@data_app.command("build")
def data_build(
    spec: str = typer.Option("demo", help="a built-in spec (tiny, demo) or a YAML file"),
    out: str = typer.Option(".longmix/datasets/demo", help="output folder or s3:// prefix"),
    overwrite: bool = typer.Option(False, help="replace a dataset already at --out"),
    mlflow_log: bool = typer.Option(True, "--mlflow/--no-mlflow", help="log the dataset to MLflow"),
    tokenizer: str | None = typer.Option(None, help="use this tokenizer.json (e.g. a checkpoint's) "
                                         "instead of the spec's"),
) -> None:
    """Preprocess a corpus into packed Parquet shards and a manifest, with Ray Data."""
    from infra.settings import get_settings
    from workers.data.build import BuildError, build_dataset
    from workers.data.spec import SpecError, load_spec

    try:
        corpus = load_spec(spec)  # refused here, before Ray starts, if anything is wrong
        if tokenizer:
            corpus = corpus.model_copy(update={"tokenizer": corpus.tokenizer.model_copy(
                update={"path": tokenizer, "sha256": None})})
    except SpecError as e:
        refuse(e, 2, what="bad corpus spec")
    settings = get_settings()
    console.print(f"[bold]longmix data build[/] spec={corpus.name} ({len(corpus.sources)} sources) -> {out}")
    with Progress(TextColumn("[bold blue]data"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("starting Ray", total=BUILD_PHASES + 1)

        def on_phase(name: str) -> None:
            progress.update(task, description=name, advance=0 if name.startswith("listing") else 1)

        try:
            result = build_dataset(corpus, out, str(settings.cache_dir), overwrite=overwrite,
                                   on_phase=on_phase)
        except BuildError as e:
            refuse(e, 2, what="build refused")
        progress.update(task, completed=BUILD_PHASES + 1, description="done")
    print_dataset_summary(result.manifest, result.manifest_uri, result.seconds)
    if mlflow_log:
        from infra.tracking import configure_mlflow
        from workers.data.report import log_dataset

        configure_mlflow(settings)
        run_id = log_dataset(result.manifest, result.manifest_uri)
        console.print(f"logged to MLflow run {run_id} ({settings.tracking_uri})")


def print_dataset_summary(manifest: dict, uri: str, seconds: float) -> None:
    table = Table(title=f"dataset {manifest['name']}: {uri}")
    for col in ("split", "shards", "rows", "text", "image", "audio", "video"):
        table.add_column(col, justify="right")
    for split, info in manifest["splits"].items():
        t = info["tokens"]
        table.add_row(split, str(len(info["shards"])), f"{info['rows']:,}",
                      *(f"{t.get(m, 0):,}" for m in ("text", "image", "audio", "video")))
    console.print(table)
    if manifest["spec"].get("kind") == "preference":
        console.print(f"preference pairs, one a row: "
                      f"{sum(i['rows'] for i in manifest['splits'].values()):,} "
                      f"({manifest['synthetic'].get('preference', 0):,} of them built in); the "
                      "tokens counted are the prompt's and the chosen response's")
    q = manifest["quarantine"]
    console.print(f"{sum(s.get('documents', 0) for s in manifest['sources']):,} documents from "
                  f"{len(manifest['sources'])} sources, {manifest['duplicates_removed']} duplicates "
                  f"removed, {q['count']} inputs quarantined, PII scrubbed {manifest['pii_scrubbed']}, "
                  f"{len(manifest['canaries'])} canaries; digest {manifest['digest'][:16]}; "
                  f"{seconds:.0f} s")
    for record in q["records"][:10]:
        console.print(f"  [yellow]quarantined[/] {record['uri']}: {record['reason']}", markup=True,
                      highlight=False)
    if q["count"] > 10:
        console.print(f"  ... and {q['count'] - 10} more in the manifest")


@data_app.command("readers")
def data_readers() -> None:
    """List the readers a corpus spec can name, with their modalities and options."""
    from workers.data.readers import all_readers

    table = Table(title="readers", show_lines=True)
    for col in ("reader", "modalities", "location", "license", "what it reads"):
        table.add_column(col)
    for name, r in sorted(all_readers().items()):
        table.add_row(name, ", ".join(r.modalities), "builtin" if r.builtin else "path, glob, s3://",
                      r.license or "(the files')", r.description)
    console.print(table)


@data_app.command("verify")
def data_verify(manifest: str = typer.Argument(..., help="manifest.json URI or the dataset folder")) -> None:
    """Check the manifest's own digest and every shard and the tokenizer against theirs."""
    from workers.data.manifest import ManifestError, verify_manifest

    try:
        m = verify_manifest(manifest)
    except ManifestError as e:
        refuse(e)
    shards = sum(len(s["shards"]) for s in m["splits"].values())
    console.print(f"ok: {m['name']} digest {m['digest'][:16]}, {shards} shards and the tokenizer verified")


@app.command()
def presets() -> None:
    """List the model presets with their total and active parameter counts."""
    from model.config import PRESETS

    table = Table(title="model presets")
    for col in ("preset", "d_model", "layers", "heads (kv)", "experts (top-k)", "context",
                "total params", "active params"):
        table.add_column(col, justify="right")
    for name, cfg in PRESETS.items():
        counts = cfg.param_counts()
        table.add_row(name, str(cfg.d_model), str(cfg.n_layers), f"{cfg.n_heads} ({cfg.n_kv_heads})",
                      f"{cfg.n_experts} ({cfg.top_k})", str(cfg.max_seq_len),
                      f"{counts['total'] / 1e6:.1f}M", f"{counts['active'] / 1e6:.1f}M")
    console.print(table)


@app.command()
@options_from(TrainConfig, skip=("resources_per_worker",))
def train(options: dict) -> None:
    """Train one stage with Ray Train; the final checkpoint is registered in MLflow. The options
    are TrainConfig's fields (workers/train/config.py)."""
    from infra.settings import get_settings
    from workers.train.config import TrainConfigError, parse_train_config, plan_stage
    from workers.train.trainer import train as run_training

    try:
        cfg = parse_train_config(options)
        plan = plan_stage(cfg)  # refused here, before Ray starts
    except TrainConfigError as e:
        refuse(e, 2)
    settings = get_settings()
    console.print(f"[bold]longmix train[/] stage={cfg.stage} dataset={plan.manifest['name']} "
                  f"seq_len={plan.seq_len} workers={cfg.workers} steps={cfg.steps}")
    result = follow_training(lambda: run_training(cfg, settings), cfg.steps, settings)
    print_train_summary(cfg, result)


def follow_training(run, steps: int, settings):
    """Run training in a thread while a progress bar follows its MLflow metrics."""
    import threading

    from mlflow.tracking import MlflowClient

    outcome: dict = {}

    def target():
        try:
            outcome["result"] = run()
        except BaseException as e:  # re-raised below, in the caller's thread
            outcome["error"] = e

    from infra.tracking import configure_mlflow

    experiment_id = configure_mlflow(settings)
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    with Progress(TextColumn("[bold blue]train"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]}  {task.fields[tps]} tok/s"), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("train", total=steps, loss="-", tps="-")
        client = MlflowClient(settings.tracking_uri)
        while thread.is_alive():
            thread.join(timeout=2.0)
            running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'",
                                         order_by=["attributes.start_time DESC"], max_results=1)
            if not running:
                continue
            latest = running[0].data.metrics
            if "loss" in latest:
                history = client.get_metric_history(running[0].info.run_id, "loss")
                progress.update(task, completed=max(m.step for m in history),
                                loss=f"{latest['loss']:.3f}", tps=f"{latest.get('tokens_per_s', 0):,.0f}")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def print_train_summary(cfg, result) -> None:
    table = Table(title=f"trained: {cfg.stage}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    metrics = result.metrics
    rows = [("final loss", f"{metrics.get('loss', float('nan')):.3f}"),
            ("validation loss", f"{metrics['val_loss']:.3f}" if "val_loss" in metrics
             else "none: the validation split has no rows for this stage"),
            *([("held-out reward accuracy", f"{metrics['val_reward_accuracy']:.1%} of the "
                "validation pairs prefer the chosen response"),
               ("reward margin", f"{metrics['reward_margin']:.3f} (chosen over rejected, last "
                "step)")] if "val_reward_accuracy" in metrics else []),
            ("tokens/s", f"{metrics.get('tokens_per_s', 0):,.0f}"),
            ("utilisation", f"{metrics.get('utilisation', 0):.1%} of the measured matmul peak"),
            ("checkpoint", str(result.checkpoint)),
            ("MLflow run", result.run_id),
            ("registered", f"{cfg.registered_model} version {result.model_version}"
             if result.model_version else "not registered")]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


@app.command("generate")
def generate_cmd(
    checkpoint: Path = typer.Argument(..., help="checkpoint folder"),
    prompt: str = typer.Argument(...),
    max_tokens: int = typer.Option(64),
    temperature: float = typer.Option(0.0),
    top_p: float = typer.Option(1.0),
    seed: int | None = typer.Option(None),
) -> None:
    """Continue a prompt with a checkpoint (digests verified before loading)."""
    from model.checkpoint import CheckpointError, load_checkpoint
    from model.generate import SamplingParams, generate

    try:
        model, tokenizer = load_checkpoint(checkpoint)
        params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                seed=seed)
    except (CheckpointError, ValueError) as e:
        refuse(e, 2, what="error")
    gen = generate(model.eval(), tokenizer, tokenizer.encode(prompt, bos=True), params)
    console.print(prompt + gen.text, markup=False, highlight=False)
    console.print(f"[dim]{len(gen.token_ids)} tokens, finish_reason={gen.finish_reason}[/]")


@app.command("export-hf")
def export_hf(
    checkpoint: Path = typer.Argument(..., help="checkpoint folder"),
    out: Path = typer.Argument(..., help="output folder for the Hugging Face Mixtral model"),
) -> None:
    """Export the text backbone as a Hugging Face Mixtral model (config + safetensors)."""
    from model.checkpoint import CheckpointError
    from model.hf_export import ExportError, export_mixtral

    try:
        path = export_mixtral(checkpoint, out)
    except (CheckpointError, ExportError) as e:
        refuse(e, 2, what="error")
    console.print(f"exported to {path}; load it with transformers.MixtralForCausalLM.from_pretrained")


@app.command("serve")
def serve_cmd(
    model: str = typer.Option(..., help="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint folder"),
    host: str | None = typer.Option(None, help="default: LONGMIX_SERVE_HOST (127.0.0.1)"),
    port: int | None = typer.Option(None, min=0, max=65535,
                                    help="default: LONGMIX_SERVE_PORT (8000); 0 picks a free one"),
    detach: bool = typer.Option(False, help="return once it serves (on a Ray cluster that outlives "
                                "this command, LONGMIX_RAY_ADDRESS)"),
    unapproved: bool = typer.Option(False, "--unapproved",
                                    help="serve without an approval, for development: a folder "
                                    "or any version (/readyz and the logs say so)"),
) -> None:
    """Serve a model with Ray Serve: an OpenAI-compatible API, with bearer-token auth. A
    registered version serves only with its approval, and only the files it approved."""
    from infra.settings import get_settings
    from model.checkpoint import CheckpointError
    from pipelines.approval import ApprovalError, approved_version
    from workers.serve.app import DeployError, start_server

    settings = get_settings()
    overrides = {k: v for k, v in (("serve_host", host), ("serve_port", port)) if v is not None}
    settings = settings.model_copy(update=overrides)
    console.print(f"[bold]longmix serve[/] {model}: loading, verifying, warming up")
    try:
        digest = None
        if not unapproved:
            from infra.tracking import registry_client

            model, receipt = approved_version(registry_client(), model, settings)
            digest = receipt.digest
            console.print(f"{model}: approved by {receipt.reviewer}, digest {digest[:12]}…",
                          highlight=False)
        info = start_server(model, settings, digest=digest)
    except (ApprovalError, CheckpointError, DeployError, ValueError, OSError) as e:
        refuse(e, 2)
    console.print(f"serving [bold]{info.model}[/] at {info.url}/v1", soft_wrap=True)
    console.print(f"OpenAPI: {info.url}/docs", soft_wrap=True)
    if info.generated_key:
        console.print(f"API key (made for this run): {info.generated_key}", highlight=False,
                      soft_wrap=True)
    else:
        console.print("API key: the configured one(s) (LONGMIX_SERVE_API_KEYS / _API_KEY_FILE)")
    if detach:
        return
    console.print("Ctrl-C stops it")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()


@app.command("eval")
def eval_cmd(
    model: str = typer.Option(..., help="a checkpoint folder, models:/NAME@ALIAS (or /VERSION) or "
                              "an OpenAI-compatible endpoint's base URL (http://host:port)"),
    suite: str = typer.Option("demo", help="tiny (CI), demo or full"),
    dataset: str | None = typer.Option(None, help="dataset manifest (or its folder): held-out "
                                       "split and PII canaries; default: the Python docs"),
    split: str = typer.Option("test", help="the dataset's held-out split"),
    champion: str | None = typer.Option(None, help="compare with this model (default: "
                                        "models:/NAME@champion for a registered model)"),
    evals: str | None = typer.Option(None, help="comma-separated subset of the suite's evals"),
    lengths: str | None = typer.Option(None, help="NIAH context lengths in tokens, e.g. 256,512"),
    depths: int | None = typer.Option(None, min=1, help="NIAH depths, linearly spaced 0..100%"),
    safety_data: Path | None = typer.Option(None, help="folder of public safety sets (layout: "
                                            "docs/evals.md, Safety data)"),
    api_key: str | None = typer.Option(None, envvar="LONGMIX_EVAL_API_KEY",
                                       help="bearer token of the endpoint"),
    endpoint_model: str | None = typer.Option(None, help="model name at the endpoint (default: "
                                              "the first it lists)"),
    out: Path | None = typer.Option(None, help="report folder (default under LONGMIX_HOME)"),
    mlflow_log: bool = typer.Option(True, "--mlflow/--no-mlflow", help="log the report to MLflow"),
    inline: bool = typer.Option(False, help="run the evals in this process, not as Ray tasks"),
) -> None:
    """Long-context and safety evals of a checkpoint, registered model or endpoint."""
    from pydantic import ValidationError

    from model.checkpoint import CheckpointError
    from workers.data.manifest import ManifestError
    from workers.evals.config import get_suite
    from workers.evals.endpoint_adapter import EndpointError
    from workers.evals.suite import evaluate, summary_rows

    overrides: dict = {"safety_data": safety_data} if safety_data else {}
    try:
        if evals:
            overrides["evals"] = tuple(e.strip() for e in evals.split(",") if e.strip())
        if lengths:
            overrides["niah_lengths"] = tuple(int(x) for x in lengths.split(","))
        if depths:
            overrides["niah_depths"] = depths
        cfg = get_suite(suite, **overrides)
        outcome = evaluate(model, cfg, manifest=dataset, split=split, champion=champion, out=out,
                           api_key=api_key, endpoint_model=endpoint_model,
                           executor="inline" if inline else "ray", log_to_mlflow=mlflow_log)
    except (ValueError, ValidationError, CheckpointError, ManifestError, EndpointError) as e:
        refuse(e, 2, what="eval refused")
    report = outcome.report
    table = Table(title=f"eval {model} ({cfg.name}) on {report.data['name']}")
    for col in ("metric", "value", "samples", "vs champion"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for row in summary_rows(report):
        table.add_row(*row)
    console.print(table)
    for name, summary in report.evals.items():
        for line in ([f"skipped: {summary.skipped}"] if summary.skipped else []) + summary.notes:
            console.print(f"  [yellow]{name}[/] {line}", highlight=False)
    console.print(f"report {outcome.path}" + (f"; MLflow run {outcome.run_id}" if outcome.run_id
                                             else ""), soft_wrap=True)


@app.command("gate")
def gate_cmd(
    report: Path = typer.Option(..., help="an eval report (report.json, or its folder)"),
    policy: str = typer.Option("default", help="a gate policy: default, demo, or a YAML file"),
    record: str | None = typer.Option(None, help="NAME/VERSION of the registered model version "
                                      "the report judged: tag it with the decision"),
) -> None:
    """Apply a gate policy to an eval report; print each check; optionally record the decision
    on the model version. Exits 1 when the gate fails."""
    from infra.tracking import registry_client
    from pipelines.gate.decide import GateError, decide
    from pipelines.gate.policy import PolicyError, load_policy
    from pipelines.gate.record import record_decision
    from workers.evals.report import REPORT_NAME, read_report

    try:
        gate_policy = load_policy(policy)
    except PolicyError as e:
        refuse(e, 2, what="policy refused")
    decision = decide(read_report(report / REPORT_NAME if report.is_dir() else report), gate_policy)
    table = Table(title=f"gate {decision.policy}: {decision.status}")
    for col in ("check", "metric", "threshold", "value", "result"):
        table.add_column(col)
    for c in decision.checks:
        table.add_row(c.name + (" (hard)" if c.hard else ""), c.metric, c.threshold,
                      "—" if c.value is None else f"{c.value:.4g}",
                      ("[green]pass[/] " if c.passed else "[red]fail[/] ") + c.reason)
    console.print(table)
    if record:
        name, _, version = record.rpartition("/")
        try:
            path = record_decision(registry_client(), name, version, decision)
        except GateError as e:
            refuse(e, 2, what="not recorded")
        console.print(f"recorded on {name} version {version}: gate.* tags and {path}")
    if decision.status == "failed":
        raise typer.Exit(1)


@app.command()
def verify(checkpoint: Path = typer.Argument(..., help="checkpoint folder")) -> None:
    """Check every file of a checkpoint against its digest.json."""
    from model.checkpoint import CheckpointError, verify_digest

    try:
        files = verify_digest(checkpoint)
    except CheckpointError as e:
        refuse(e)
    console.print_json(json.dumps({"checkpoint": str(checkpoint), "verified": files}))


# the pipeline (cli_pipeline) and the reviewer's and operator's commands (cli_review)
app.command("run")(cli_pipeline.run)
app.add_typer(cli_pipeline.flows_app, name="flows")
app.command()(cli_pipeline.ui)
app.command()(cli_pipeline.down)
for command in (cli_review.status, cli_review.card, cli_review.approve, cli_review.reject,
                cli_review.override, cli_review.deploy, cli_review.rollback):
    app.command()(command)
app.add_typer(cli_review.audit_app, name="audit")
app.add_typer(cli_review.accounts_app, name="accounts")

if __name__ == "__main__":
    app()
