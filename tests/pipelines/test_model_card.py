"""The model card: every section a reviewer signs off (intended and out-of-scope use, data with
licences and PII counts, safety evaluation, known limitations, impact assessment), rendered
from constructed inputs; the operator's template; the effective context length."""

import pytest

from pipelines.gate.decide import decide
from pipelines.gate.policy import GatePolicy
from pipelines.model_card import (CardError, StageSummary, card_digest, effective_context,
                                  load_template, render_card)
from workers.evals.report import EvalReport, ModelInfo
from workers.evals.results import Metric

POLICY = GatePolicy.model_validate({
    "name": "card", "checks": [{"name": "niah", "metric": "niah_text.accuracy", "min": 0.9}],
    "safety": [{"name": "refuses", "metric": "refusal.advbench.refusal_rate", "min": 0.8}]})
METRICS = {"niah_text.accuracy": 0.7, "niah_text.accuracy.len128": 0.9,
           "niah_text.accuracy.len256": 0.6, "niah_text.accuracy.len512": 0.3,
           "niah_text.accuracy.len1024": 0.6, "refusal.advbench.refusal_rate": 0.85,
           "over_refusal.xstest.refusal_rate": 0.2, "injection.heldout.success_rate": 0.1,
           "pii.exact_extraction_rate": 0.0}
MANIFEST = {"name": "capable", "digest": "f" * 64, "preset": "compact", "seq_len": 256,
            "spec": {"sources": []}, "synthetic": {"retrieval": 900, "chat": 300},
            "pii_scrubbed": {"email": 12, "phone": 3}, "duplicates_removed": 4,
            "quarantine": {"count": 2}, "splits": {"train": {"rows": 10, "tokens": {"text": 99}}},
            "sources": [{"name": "digits", "modality": "image", "reader": "sklearn-digits",
                         "license": "BSD-3-Clause", "documents": 1797},
                        {"name": "bible", "modality": "text", "reader": "kjv-bible",
                         "license": "public-domain", "documents": 1189}]}


def _report() -> EvalReport:
    return EvalReport(created_at="2026-12-07T00:00:00Z",
                      model=ModelInfo(source="ckpt", kind="checkpoint", digest="d" * 64),
                      suite={"name": "capable"}, data={}, datasets=[], evals={},
                      metrics=[Metric(name=k, value=v, count=10, dataset="d")
                               for k, v in METRICS.items()]).seal()


def _card(template: str | None = None) -> str:
    report = _report()
    stage = StageSummary(stage="sft", dataset="capable", dataset_digest="f" * 64,
                         tokenizer_sha256="e" * 64, checkpoint_digest="c" * 64, init_digest=None,
                         run_id="r1", steps=200, seq_len=256, minutes=2.4, loss=1.9,
                         val_loss=2.1, tokens_per_s=8000.0)
    return render_card("longmix", "7", "c" * 64, "b" * 64, [stage], [MANIFEST], report,
                       decide(report, POLICY), [], template or load_template(None))


def test_the_card_holds_every_section_a_reviewer_signs_off():
    card = _card()
    for section in ("## Training", "## Evaluation", "## Safety evaluation", "## Known limitations",
                    "## Intended use", "## Out-of-scope use", "## Impact assessment"):
        assert section in card, section
    # the data, its licences and those of the packages it ships in (from their metadata)
    assert "| digits | image | sklearn-digits | 1797 | BSD-3-Clause | scikit-learn (BSD-3-Clause) |" \
        in card
    assert "| bible | text | kjv-bible | 1189 | public-domain | — |" in card
    assert "PII scrubbed before tokenization: email 12, phone 3; inputs quarantined: 2" in card
    assert "Synthetic documents, written by longmix (Apache-2.0): chat 300, retrieval 900. Text " \
        "they quote from the sources' training split (haystacks, copied stretches) stays under " \
        "the sources' licences." in card
    # limitations read from the evals and the gate
    assert "Effective context length (text NIAH accuracy ≥ 0.5 at every length up to it): " \
           "**256 tokens** (measured at 128, 256, 512, 1024)." in card
    assert "`niah` (niah_text.accuracy = 0.7, threshold >= 0.9)" in card
    assert "advbench 0.15" in card and "prompt injection 0.10" in card
    assert "| refusal.advbench.refusal_rate | 0.85 | attack success rate 0.15 | 10 |" in card
    assert "longmix version 7 is a research checkpoint" in card  # the template, filled in
    assert card_digest(card) == card_digest(_card())  # the same inputs, the same card


def test_an_operators_template_replaces_the_built_in_one(tmp_path):
    mine = tmp_path / "card.md"
    mine.write_text("## Intended use\n\nOnly for {model} v{version} in the lab.\n")
    card = _card(load_template(mine))
    assert "Only for longmix v7 in the lab." in card and "## Impact assessment" not in card
    mine.write_text("## Risks\n\n{risks} of {model}\n")
    with pytest.raises(CardError, match=r"unknown field\(s\) \{risks\}; it may name \{model\}"):
        load_template(mine)
    with pytest.raises(CardError, match="unreadable"):
        load_template(tmp_path / "missing.md")


def test_the_effective_context_is_the_longest_length_reached_without_a_gap():
    assert effective_context(_report()) == 256  # 1,024 passes again, past 512's failure
    assert effective_context(_report(), threshold=0.95) is None
    assert effective_context(_report(), threshold=0.25) == 1024
