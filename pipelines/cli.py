"""The `longmix` command line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

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
) -> None:
    """Preprocess a corpus into packed Parquet shards and a manifest, with Ray Data."""
    from infra.settings import get_settings
    from workers.data.build import BuildError, build_dataset
    from workers.data.spec import SpecError, load_spec

    try:
        corpus = load_spec(spec)  # refused here, before Ray starts, if anything is wrong
    except SpecError as e:
        console.print(f"[red]bad corpus spec:[/] {e}")
        raise typer.Exit(2) from e
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
            console.print(f"[red]build refused:[/] {e}")
            raise typer.Exit(2) from e
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
        console.print(f"[red]refused:[/] {e}")
        raise typer.Exit(1) from e
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
def train(
    preset: str = typer.Option("small", help="model preset (see `longmix presets`)"),
    steps: int = typer.Option(300, help="optimizer steps"),
    seq_len: int = typer.Option(256, help="tokens per packed training sequence"),
    batch_size: int = typer.Option(16, help="sequences per step"),
    lr: float = typer.Option(2e-3, help="peak learning rate"),
    max_minutes: float = typer.Option(10.0, help="stop early after this long (still saves)"),
    corpus_mb: float = typer.Option(3.0, help="MB of standard-library source to train on, besides the docs"),
    out: Path = typer.Option(Path(".longmix/runs"), help="where the run folder goes"),
) -> None:
    """Train a preset in this process on Python's own docs and standard library, then report."""
    import torch

    from workers.train.local import LocalTrainConfig, train_local

    torch.set_num_threads(torch.get_num_threads())
    try:
        cfg = LocalTrainConfig(preset=preset, steps=steps, seq_len=seq_len, batch_size=batch_size,
                               lr=lr, max_minutes=max_minutes, corpus_bytes=int(corpus_mb * 1e6))
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    run_dir = out / time.strftime("train-%Y%m%d-%H%M%S")
    console.print(f"[bold]longmix train[/] preset={preset} steps={steps} seq_len={seq_len} "
                  f"batch={batch_size} -> {run_dir}")
    console.print("building the corpus and training the tokenizer ...")
    with Progress(TextColumn("[bold blue]train"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]:.3f}  val {task.fields[val]}  "
                             "{task.fields[tps]:.0f} tok/s"), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("train", total=steps, loss=float("nan"), val="-", tps=0.0)
        started = time.perf_counter()
        seen = {"tokens": 0}

        def on_step(step, result, val_loss):
            seen["tokens"] += result.tokens
            fields = {"loss": result.loss, "tps": seen["tokens"] / (time.perf_counter() - started)}
            if val_loss is not None:
                fields["val"] = f"{val_loss:.3f}"
            progress.update(task, advance=1, **fields)

        summary = train_local(cfg, run_dir, on_step)
    print_train_summary(summary)


def print_train_summary(summary) -> None:
    table = Table(title=f"trained {summary.preset}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    p = summary.parameters
    rows = [
        ("parameters", f"{p['total'] / 1e6:.1f}M total, {p['active'] / 1e6:.1f}M active per token"),
        ("steps / tokens", f"{summary.steps} / {summary.tokens:,}"),
        ("time", f"{summary.seconds:.0f} s, {summary.tokens_per_second:,.0f} tokens/s, "
                 f"{summary.utilisation:.1%} of the measured fp32 matmul peak"),
        ("train loss", f"{summary.first_loss:.3f} -> {summary.final_loss:.3f}"),
        ("validation loss", f"{summary.validation_loss_start:.3f} -> {summary.validation_loss_end:.3f}"),
        ("expert load max/mean", ", ".join(f"{x:.2f}" for x in summary.max_over_mean_expert_load)),
        ("checkpoint", summary.checkpoint),
        ("sample", repr(summary.sample)),
    ]
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
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from e
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
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from e
    console.print(f"exported to {path}; load it with transformers.MixtralForCausalLM.from_pretrained")


@app.command()
def verify(checkpoint: Path = typer.Argument(..., help="checkpoint folder")) -> None:
    """Check every file of a checkpoint against its digest.json."""
    from model.checkpoint import CheckpointError, verify_digest

    try:
        files = verify_digest(checkpoint)
    except CheckpointError as e:
        console.print(f"[red]refused:[/] {e}")
        raise typer.Exit(1) from e
    console.print_json(json.dumps({"checkpoint": str(checkpoint), "verified": files}))


if __name__ == "__main__":
    app()
