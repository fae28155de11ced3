"""Log a built dataset to MLflow: the dataset input (mlflow.data) with the manifest's digest,
statistics as params and metrics, the manifest and quarantine report, and a token-mix figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display: figures go to files and MLflow
import matplotlib.pyplot as plt  # noqa: E402

MODALITY_COLORS = {"text": "#4C72B0", "image": "#DD8452", "audio": "#55A868", "video": "#C44E52"}


def token_mix_figure(manifest: dict):
    """Stacked bars: tokens per modality in each split."""
    splits = list(manifest["splits"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = [0] * len(splits)
    for modality, color in MODALITY_COLORS.items():
        values = [manifest["splits"][s]["tokens"].get(modality, 0) for s in splits]
        ax.bar(splits, values, bottom=bottom, label=modality, color=color)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("tokens")
    ax.set_title(f"token mix of {manifest['name']} (seq_len {manifest['seq_len']})")
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
    run = mlflow.active_run() or mlflow.start_run(run_name=f"data-{manifest['name']}")
    with mlflow.start_run(run_id=run.info.run_id):
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
