"""The model card of a registered version: what was trained on what, the eval results with their
plots, and the gate's outcome, as markdown attached to the version (an artifact of its run, with
the plots beside it, and the version's description, which the MLflow UI renders)."""

from __future__ import annotations

from pathlib import Path

from pipelines.gate.decide import GateDecision
from workers.evals.report import EvalReport

CARD_FOLDER = "model_card"


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _figure(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def render_card(name: str, version: str, digest: str, manifest: dict, stages: list[dict],
                report: EvalReport, decision: GateDecision, figures: list[str]) -> str:
    """`stages`: per training stage, its name, steps and final metrics (from MLflow)."""
    lines = [f"# {name} version {version}", "",
             f"- checkpoint digest (`longmix.digest`): `{digest}`",
             f"- gate: **{decision.status}** under policy `{decision.policy}`",
             f"- eval report digest: `{report.digest}`", "",
             "## Training", "",
             f"Dataset `{manifest['name']}` (manifest digest `{manifest['digest']}`, preset "
             f"`{manifest['preset']}`, sequences of {manifest['seq_len']} tokens):", ""]
    lines += _table(("source", "modality", "reader"),
                    [(s["name"], s["modality"], s["reader"]) for s in manifest["spec"]["sources"]])
    lines += [""] + _table(("split", "rows", "tokens"),
                           [(split, info["rows"], f"{sum(info['tokens'].values()):,}")
                            for split, info in manifest["splits"].items()])
    lines += ["", "Stages, in order:", ""]
    lines += _table(("stage", "steps", "loss", "validation loss", "tokens/s", "MLflow run"),
                    [(s["stage"], s["steps"], _figure(s.get("loss")), _figure(s.get("val_loss")),
                      _figure(s.get("tokens_per_s")), f"`{s['run_id']}`") for s in stages])
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


def stage_summaries(client, train_runs: list[str]) -> list[dict]:
    """Each training stage's name, steps and final metrics, from its MLflow run."""
    out = []
    for run_id in train_runs:
        run = client.get_run(run_id)
        out.append({"stage": run.data.tags.get("longmix.stage", "?"),
                    "steps": run.data.params.get("steps", "?"), "run_id": run_id,
                    **{k: run.data.metrics.get(k) for k in ("loss", "val_loss", "tokens_per_s")}})
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
