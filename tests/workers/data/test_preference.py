"""Preference pairs: the JSON-lines form and its quarantine, the built-in pairs (kinds, near
misses, nothing of the evals'), and the rows the pipeline writes (one per pair, the loss on the
responses only)."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from model.tokenizer import Tokenizer
from workers.data.build import build_dataset
from workers.data.manifest import verify_manifest
from workers.data.preference import (PAIR_KINDS, PairError, other_value, pair_document,
                                     parse_pair, preference_pairs)
from workers.data.retrieval import check_disjoint
from workers.data.runners import InProcessRunner
from workers.data.sources import python_docs_corpus
from workers.data.spec import SpecError, parse_spec
from workers.data.synth import prompt_hash

GOOD = {"prompt": "How do I stop a runaway Python thread?", "chosen": "Use a threading.Event "
        "that the thread checks, and set it.", "rejected": "I can't help with that.",
        "source": "reviewers"}


def _spec(location, **extra):
    return parse_spec({
        "name": "pairs", "kind": "preference", "preset": "tiny",
        "sources": [{"name": "docs", "modality": "text", "reader": "pydoc-topics",
                     "options": {"max_docs": 4}},
                     {"name": "mine", "modality": "text", "reader": "preference-jsonl",
                      "location": str(location), "license": "CC0-1.0"}],
        "splits": {"validation_percent": 0, "test_percent": 0},
        "packing": {"seq_len": 160}, "synthetic": {"preference": 6, "haystack_tokens": 128},
        "tokenizer": {"vocab_size": 400, "sample_bytes": 20000}, **extra})


def test_a_preference_file_is_read_and_its_bad_lines_quarantined(tmp_path):
    eval_csv = tmp_path / "xstest_prompts.csv"
    eval_csv.write_text("id,prompt\n1,How do I kill a zombie process on Linux?\n")
    lines = [json.dumps(GOOD),
             json.dumps({**GOOD, "prompt": "How do I kill a zombie process on Linux?"}),
             json.dumps({**GOOD, "rejected": GOOD["chosen"]}),
             json.dumps({"prompt": "Hi", "chosen": "Hello"}),
             "{not json",
             json.dumps({**GOOD, "prompt": "Explain threads.", "chosen": "a long answer " * 60}),
             json.dumps({"prompt": "The capital of France is", "chosen": " Paris.",
                         "rejected": " Rome.", "format": "text", "source": "facts"})]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = build_dataset(_spec(tmp_path / "pairs.jsonl", synthetic={
        "preference": 6, "haystack_tokens": 128, "exclude_prompts_from": [str(eval_csv)]}),
        str(out), str(tmp_path / "cache"), runner=InProcessRunner())
    manifest = verify_manifest(str(out))
    reasons = {r["uri"].rsplit("#", 1)[-1]: r["reason"] for r in manifest["quarantine"]["records"]
               if r["source"] == "mine"}
    assert "evaluation sets' prompts" in reasons["L2"]
    assert "chosen and rejected are the same response" in reasons["L3"]
    assert "rejected: Field required" in reasons["L4"]
    assert "invalid JSON" in reasons["L5"]
    assert "rows hold 161" in reasons["L6"]
    assert set(reasons) == {"L2", "L3", "L4", "L5", "L6"}
    table = pq.read_table([str(out / s["path"]) for s in manifest["splits"]["train"]["shards"]])
    sources = table.column("source").to_pylist()
    assert sources.count("reviewers") == sources.count("facts") == 1
    assert manifest["documents_index"]["documents"] >= table.num_rows  # the haystack texts too
    tokenizer = Tokenizer.from_str((out / "tokenizer.json").read_text())
    row = table.slice(sources.index("facts"), 1).to_pylist()[0]
    for prefix, response in (("", " Paris."), ("rejected_", " Rome.")):
        ids, mask = np.array(row[prefix + "tokens"]), np.array(row[prefix + "loss_mask"], bool)
        assert tokenizer.decode(ids[mask]) == response  # the loss covers the response alone
        assert len(ids) == 161 and (np.array(row[prefix + "doc_ids"]) >= 0).sum() == (ids > 0).sum()
    assert len(result.manifest["splits"]["train"]["shards"]) == 1


@pytest.mark.parametrize("record, problem", [
    ([GOOD], "a JSON list, not an object"),
    ({**GOOD, "prompt": ""}, "prompt: String should have at least 1 character"),
    ({**GOOD, "extra": 1}, "extra: Extra inputs are not permitted"),
    ({**GOOD, "format": "text", "system": "Be brief."}, "a system prompt needs format chat"),
])
def test_bad_pairs_are_refused_with_the_reason(record, problem):
    with pytest.raises(PairError, match=problem):
        parse_pair(record)


def test_a_chat_pair_renders_the_models_chat_format():
    doc = pair_document(parse_pair({**GOOD, "system": "Be brief."}), "mine", "file#L1", "CC0-1.0")
    assert doc.text == f"<|system|>Be brief.<|end|><|user|>{GOOD['prompt']}<|end|><|assistant|>"
    assert doc.meta["chosen"] == GOOD["chosen"] + "<|end|>"
    assert doc.meta["prompt_hash"] == prompt_hash(GOOD["prompt"])


def test_built_in_pairs_take_the_kinds_in_turn_and_never_the_evals_needle():
    haystacks = python_docs_corpus()[:20]
    docs = preference_pairs(30, seed=0, haystacks=haystacks, haystack_tokens=200,
                            count_tokens=lambda text: len(text) // 3)
    assert [d.meta["pair_source"] for d in docs[:3]] == list(PAIR_KINDS)
    assert docs == preference_pairs(30, seed=0, haystacks=haystacks, haystack_tokens=200,
                                    count_tokens=lambda text: len(text) // 3)
    for doc in docs:
        chosen, rejected = doc.meta["chosen"], doc.meta["rejected"]
        kind = doc.meta["pair_source"]
        if kind == "refusal":
            assert rejected.startswith(("Sure", "Of course", "Absolutely", "No problem", "Happy"))
        elif kind == "retrieval":
            # the value, against another of its format that the text does not hold
            assert doc.text.endswith(" Answer:") and chosen.strip() in doc.text
            assert rejected.strip() not in doc.text and chosen[1] != rejected[1]
            assert [c.isdigit() for c in chosen] == [c.isdigit() for c in rejected]
            assert len(doc.text) // 3 <= 200
    check_disjoint([d for d in docs if d.meta["pair_source"] == "retrieval"])


def test_a_rejected_value_keeps_the_format_and_is_not_in_the_text():
    rng = np.random.default_rng(0)
    for value in ("58213", "QX-4821", "900000"):
        for _ in range(50):
            other = other_value(value, f"the code is {value}, or 12345", rng)
            assert len(other) == len(value) and other[0] != value[0] and other[0] != "0"
            assert [c.isdigit() for c in other] == [c.isdigit() for c in value]
            assert other[2] == "-" if value == "QX-4821" else other not in ("12345",)


def test_pairs_belong_in_a_spec_of_kind_preference(tmp_path):
    with pytest.raises(SpecError, match="set kind: preference"):
        _spec(tmp_path / "pairs.jsonl", kind="corpus")
    with pytest.raises(SpecError, match="kind preference: give pairs"):
        parse_spec({"name": "none", "kind": "preference", "preset": "tiny",
                    "sources": [{"name": "docs", "modality": "text", "reader": "pydoc-topics"}]})
