"""Log a built dataset to MLflow: the dataset input (mlflow.data) with the manifest's digest,
statistics as params and metrics, the manifest and quarantine report, and a token-mix figure."""

from __future__ import annotations

from contextlib import nullcontext

import matplotlib

matplotlib.use("Agg")  # no display: figures go to files and MLflow
import matplotlib.pyplot as plt  # noqa: E402

SPLIT_COLORS = {"train": "#4C72B0", "validation": "#DD8452", "test": "#55A868"}
MODALITIES = ("text", "image", "audio", "video")


def token_mix_figure(manifest: dict):
    """Tokens per modality and split, on a log scale: media are orders of magnitude below text."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / len(manifest["splits"])
    for k, (split, info) in enumerate(manifest["splits"].items()):
        values = [max(info["tokens"].get(m, 0), 0) for m in MODALITIES]
        xs = [i + (k - 1) * width for i in range(len(MODALITIES))]
        bars = ax.bar(xs, values, width, label=split, color=SPLIT_COLORS.get(split))
        ax.bar_label(bars, labels=[f"{v:,}" for v in values], fontsize=7, rotation=90, padding=2)
    ax.set_xticks(range(len(MODALITIES)), MODALITIES)
    ax.set_yscale("log")
    ax.set_ylim(bottom=1, top=ax.get_ylim()[1] * 20)
    ax.set_ylabel("tokens (log scale)")
    ax.set_title(f"token mix of {manifest['name']} (rows of {manifest['seq_len']} tokens)")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def dataset_metrics(manifest: dict) -> dict[str, float]:
    metrics = {"quarantined": manifest["quarantine"]["count"],
               "duplicates_removed": manifest["duplicates_removed"]}
    for split, info in manifest["splits"].items():
        metrics[f"{split}_rows"] = info["rows"]
        metrics[f"{split}_shards"] = len(info["shards"])
        for modality, n in info["tokens"].items():
            metrics[f"{split}_tokens_{modality}"] = n
    for kind, n in manifest["pii_scrubbed"].items():
        metrics[f"pii_scrubbed_{kind}"] = n
    return metrics


def log_dataset(manifest: dict, manifest_uri: str) -> str:
    """Log into the active MLflow run (or a new one); return the run id."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    root = manifest_uri.rsplit("/", 1)[0]
    active = mlflow.active_run()
    with nullcontext(active) if active else mlflow.start_run(run_name=f"data-{manifest['name']}") as run:
        dataset = MetaDataset(resolve_dataset_source(root), name=manifest["name"],
                              digest=manifest["digest"][:16])
        mlflow.log_input(dataset, context="training",
                         tags={"manifest_sha256": manifest["digest"]})
        mlflow.log_params({"dataset": manifest["name"], "dataset_digest": manifest["digest"],
                           "preset": manifest["preset"], "seq_len": manifest["seq_len"],
                           "tokenizer_sha256": manifest["tokenizer"]["sha256"],
                           "vocab_size": manifest["tokenizer"]["vocab_size"]})
        mlflow.log_metrics(dataset_metrics(manifest))
        mlflow.log_dict({k: v for k, v in manifest.items() if k != "uri"}, "dataset/manifest.json")
        mlflow.log_figure(token_mix_figure(manifest), "dataset/token_mix.png")
        mlflow.set_tags({"longmix.dataset_uri": root, "longmix.dataset_digest": manifest["digest"]})
    plt.close("all")
    return run.info.run_id
