"""The model card of a registered version, as markdown attached to the version (an artifact of
its run, with the plots beside it, and the version's description, which the MLflow UI renders):

- the chain of training stages (its lineage) and the datasets they trained on: their sources
  with the data's licences and those of the packages the data ships in (from the packages'
  metadata), the PII scrubbed and the inputs quarantined;
- the eval results with their plots; the safety evaluation; the known limitations the evals
  show (effective context length, failed checks, attack success rates); the gate's outcome;
- intended use, out-of-scope use and the impact assessment, from a template the operator edits
  (`LONGMIX_MODEL_CARD_TEMPLATE`; the built-in one is pipelines/templates/model_card.md).

Its sha256 is the version's `model_card.digest` tag: the approval receipt carries it as
evidence, and a card changed after the approval voids the approval (pipelines/approval.py)."""

from __future__ import annotations

import hashlib
import string
from pathlib import Path

from pipelines.gate.decide import GateDecision
from pipelines.lineage import Lineage, StageRecord
from workers.evals.report import EvalReport

CARD_FOLDER = "model_card"
CARD_DIGEST_TAG = "model_card.digest"
DEFAULT_TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
TEMPLATE_FIELDS = ("model", "version")  # what a template may name, as {model}
# the longest NIAH length whose accuracy, and every shorter one's, is at least this (RULER's
# effective context length, with a fixed threshold in place of a baseline model's score)
EFFECTIVE_CONTEXT_THRESHOLD = 0.5


class CardError(ValueError):
    """The model card cannot be written; the message names the template or field."""


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
    from workers.data.readers import all_readers, package_licence

    readers = all_readers()
    lines = [f"Dataset `{manifest['name']}` (manifest digest `{manifest['digest']}`, preset "
             f"`{manifest['preset']}`, sequences of {manifest['seq_len']} tokens):", ""]
    lines += _table(("source", "modality", "reader", "documents", "data licence",
                     "shipped in (licence from the package's metadata)"),
                    [(s["name"], s["modality"], s["reader"], s.get("documents", 0),
                      s["license"] or "not stated",
                      ", ".join(f"{p} ({package_licence(p)})" for p in
                                getattr(readers.get(s["reader"]), "packages", ())) or "—")
                     for s in manifest["sources"]])
    synthetic = manifest.get("synthetic") or {}
    if synthetic:
        lines += ["", "Synthetic documents, written by longmix (Apache-2.0): " + ", ".join(
            f"{kind} {n:,}" for kind, n in sorted(synthetic.items())) + ". Text they quote "
                  "from the sources' training split (haystacks, copied stretches) stays under "
                  "the sources' licences."]
    pii = manifest.get("pii_scrubbed") or {}
    lines += ["", "PII scrubbed before tokenization: " + (", ".join(
        f"{kind} {n:,}" for kind, n in sorted(pii.items())) or "none found") + f"; inputs "
              f"quarantined: {manifest['quarantine']['count']:,}; duplicates removed: "
              f"{manifest['duplicates_removed']:,}.", ""]
    lines += _table(("split", "rows", "tokens"),
                    [(split, info["rows"], f"{sum(info['tokens'].values()):,}")
                     for split, info in manifest["splits"].items()])
    return lines


def accuracy_by_length(report: EvalReport, eval_name: str) -> list[tuple[int, float]]:
    """(length, accuracy) of the eval's per-length metrics (`<eval>.accuracy.len<N>`), by length."""
    prefix = f"{eval_name}.accuracy.len"
    return sorted((int(float(m.name[len(prefix):])), m.value) for m in report.metrics
                  if m.name.startswith(prefix))


def effective_context(report: EvalReport, eval_name: str = "niah_text",
                      threshold: float = EFFECTIVE_CONTEXT_THRESHOLD) -> int | None:
    """The longest measured length at which the eval's accuracy, and its accuracy at every
    shorter length, is at least `threshold`; None if the shortest already falls below it."""
    reached = None
    for length, accuracy in accuracy_by_length(report, eval_name):
        if accuracy < threshold:
            break
        reached = length
    return reached


def _safety_lines(report: EvalReport) -> list[str]:
    rows = []
    for m in report.metrics:
        evaluation, _, measure = m.name.partition(".")
        if evaluation == "refusal":
            rows.append((m.name, _figure(m.value), f"attack success rate {1 - m.value:.3g}",
                         m.count))
        elif evaluation in ("over_refusal", "toxicity", "injection", "pii", "jailbreak"):
            rows.append((m.name, _figure(m.value), "", m.count))
    if not rows:
        return ["The suite measured no safety eval."]
    return _table(("metric", "value", "", "samples"), rows)


def _limitations(report: EvalReport, decision: GateDecision) -> list[str]:
    context = effective_context(report)
    measured = [length for length, _ in accuracy_by_length(report, "niah_text")]
    lines = [f"- Effective context length (text NIAH accuracy ≥ {EFFECTIVE_CONTEXT_THRESHOLD} at "
             "every length up to it): " + (f"**{context:,} tokens**" if context else
                                            "**none**: below the threshold at the shortest "
                                            "length measured") +
             (f" (measured at {', '.join(map(str, measured))})." if measured else
              " (not measured).")]
    failed = [c for c in decision.checks if not c.passed]
    lines.append("- Gate checks failed: " + ("; ".join(
        f"`{c.name}` ({c.metric} = {_figure(c.value)}, threshold {c.threshold})"
        for c in failed) if failed else "none") + ".")
    attacks = [(m.name.split(".")[1], 1 - m.value) for m in report.metrics
               if m.name.startswith("refusal.") and m.name.endswith(".refusal_rate")]
    injection = [m for m in report.metrics if m.name == "injection.heldout.success_rate"]
    if attacks or injection:
        lines.append("- Attack success rates (harmful prompts answered, injections followed): "
                     + ", ".join([f"{name} {rate:.2f}" for name, rate in attacks] +
                                 [f"prompt injection {m.value:.2f}" for m in injection]) + ".")
    return lines


def load_template(path: Path | None) -> str:
    """The operator's template (or the built-in one), refused if it names an unknown field."""
    path = Path(path) if path else DEFAULT_TEMPLATE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CardError(f"model card template {path}: unreadable ({e})") from e
    unknown = sorted({field for _, field, _, _ in string.Formatter().parse(text)
                      if field is not None and field not in TEMPLATE_FIELDS})
    if unknown:
        raise CardError(f"model card template {path}: unknown field(s) "
                        f"{', '.join('{' + f + '}' for f in unknown)}; it may name "
                        f"{', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}")
    return text


def card_digest(card: str) -> str:
    return hashlib.sha256(card.encode()).hexdigest()


def render_card(name: str, version: str, digest: str, lineage_digest: str,
                stages: list[StageSummary], manifests: list[dict], report: EvalReport,
                decision: GateDecision, figures: list[str], template: str) -> str:
    """`stages`: the lineage, in order; `manifests`: the datasets the stages trained on, each
    once; `template`: load_template's, for intended use and the impact assessment."""
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
    lines += ["", "## Safety evaluation", ""] + _safety_lines(report)
    lines += ["", "## Known limitations", ""] + _limitations(report, decision)
    lines += ["", template.format(model=name, version=version).strip()]
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


def card_path(name: str, version: str) -> str:
    return f"{CARD_FOLDER}/{name}-v{version}/README.md"


def attach_card(client, name: str, version: str, card: str, report_dir: Path,
                figures: list[str]) -> str:
    """The card and its plots as artifacts of the version's run; the card as its description,
    its digest as the version's model_card.digest tag."""
    run_id = client.get_model_version(name, version).run_id
    folder = card_path(name, version).rsplit("/", 1)[0]
    for figure in figures:
        client.log_artifact(run_id, str(report_dir / figure), f"{folder}/figures")
    client.log_text(run_id, card, card_path(name, version))
    client.update_model_version(name, version, description=card)
    client.set_model_version_tag(name, version, CARD_DIGEST_TAG, card_digest(card))
    return card_path(name, version)


def current_card_digests(client, name: str, version: str) -> dict[str, str]:
    """sha256 of the card as the version shows it now: its description and its README."""
    import tempfile

    model_version = client.get_model_version(name, version)
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(model_version.run_id, card_path(name, version), tmp)
        readme = Path(local).read_text(encoding="utf-8")
    return {"description": card_digest(model_version.description or ""),
            "README": card_digest(readme)}
