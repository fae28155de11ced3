"""The model card of a registered version: the chain of training stages (its lineage) and the
datasets they trained on, the eval results with their plots, and the gate's outcome, as markdown
attached to the version (an artifact of its run, with the plots beside it, and the version's
description, which the MLflow UI renders)."""

from __future__ import annotations

from pathlib import Path

from pipelines.gate.decide import GateDecision
from pipelines.lineage import Lineage, StageRecord
from workers.evals.report import EvalReport

CARD_FOLDER = "model_card"


class StageSummary(StageRecord):
    """A stage of the lineage with what its MLflow run measured: for the card and the summary."""

    minutes: float | None  # wall time of its run
    loss: float | None  # final training loss
    val_loss: float | None
    tokens_per_s: float | None


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _figure(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _short(digest: str | None) -> str:
    return "—" if digest is None else f"`{digest[:12]}`"


def _dataset_lines(manifest: dict) -> list[str]:
    lines = [f"Dataset `{manifest['name']}` (manifest digest `{manifest['digest']}`, preset "
             f"`{manifest['preset']}`, sequences of {manifest['seq_len']} tokens):", ""]
    lines += _table(("source", "modality", "reader"),
                    [(s["name"], s["modality"], s["reader"]) for s in manifest["spec"]["sources"]])
    lines += [""] + _table(("split", "rows", "tokens"),
                           [(split, info["rows"], f"{sum(info['tokens'].values()):,}")
                            for split, info in manifest["splits"].items()])
    return lines


def render_card(name: str, version: str, digest: str, lineage_digest: str,
                stages: list[StageSummary], manifests: list[dict], report: EvalReport,
                decision: GateDecision, figures: list[str]) -> str:
    """`stages`: the lineage, in order; `manifests`: the datasets the stages trained on, each once."""
    lines = [f"# {name} version {version}", "",
             f"- checkpoint digest (`longmix.digest`): `{digest}`",
             f"- lineage digest (`longmix.lineage`): `{lineage_digest}`",
             f"- gate: **{decision.status}** under policy `{decision.policy}`",
             f"- eval report digest: `{report.digest}`", "",
             "## Training", "",
             "Stages, in order, each from the previous stage's checkpoint (digests shortened):", ""]
    lines += _table(("stage", "dataset", "seq_len", "steps", "loss", "validation loss", "minutes",
                     "tokens/s", "from checkpoint", "checkpoint", "tokenizer", "MLflow run"),
                    [(s.stage, f"`{s.dataset}` {_short(s.dataset_digest)}", s.seq_len, s.steps,
                      _figure(s.loss), _figure(s.val_loss), _figure(s.minutes),
                      _figure(s.tokens_per_s), _short(s.init_digest), _short(s.checkpoint_digest),
                      _short(s.tokenizer_sha256), f"`{s.run_id}`") for s in stages])
    for manifest in manifests:
        lines += [""] + _dataset_lines(manifest)
    champion = {c.metric: c for c in report.comparison}
    lines += ["", f"## Evaluation (suite `{report.suite['name']}`)", ""]
    lines += _table(("metric", "value", "samples", "dataset", "champion", "regressed"),
                    [(m.name, _figure(m.value), m.count, m.dataset,
                      _figure(champion[m.name].champion) if m.name in champion else "—",
                      "yes" if m.name in champion and champion[m.name].regressed else "")
                     for m in report.metrics])
    lines += [""] + [f"![{Path(f).stem}](figures/{Path(f).name})" for f in figures]
    lines += ["", f"## Gate ({decision.policy}): {decision.status}", ""]
    lines += _table(("check", "metric", "threshold", "value", "champion", "result"),
                    [(c.name + (" (hard)" if c.hard else ""), c.metric, c.threshold,
                      _figure(c.value), _figure(c.champion),
                      ("pass" if c.passed else "fail") + f": {c.reason}") for c in decision.checks])
    for o in decision.overrides:
        lines.append(f"\nOverride of `{o.check}` by {o.reviewer} at {o.at}: {o.reason}")
    return "\n".join(lines) + "\n"


def stage_summaries(client, lineage: Lineage) -> list[StageSummary]:
    """Each stage of the lineage with its run's wall time and final metrics, from MLflow."""
    out = []
    for record in lineage.stages:
        run = client.get_run(record.run_id)
        minutes = ((run.info.end_time - run.info.start_time) / 60_000 if run.info.end_time
                   else None)
        out.append(StageSummary(**record.model_dump(), minutes=minutes,
                                **{k: run.data.metrics.get(k)
                                   for k in ("loss", "val_loss", "tokens_per_s")}))
    return out


def attach_card(client, name: str, version: str, card: str, report_dir: Path,
                figures: list[str]) -> str:
    """The card and its plots as artifacts of the version's run; the card as its description."""
    run_id = client.get_model_version(name, version).run_id
    folder = f"{CARD_FOLDER}/{name}-v{version}"
    for figure in figures:
        client.log_artifact(run_id, str(report_dir / figure), f"{folder}/figures")
    client.log_text(run_id, card, f"{folder}/README.md")
    client.update_model_version(name, version, description=card)
    return f"{folder}/README.md"
