import csv
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from model.tokenizer import SPECIAL_IDS
from workers.data.sources import python_docs_corpus
from workers.data.synth import (
    INSTRUCTIONS,
    canary_documents,
    canary_manifest,
    canary_records,
    chat_examples,
    eval_prompt_hashes,
    load_instructions,
    lookalike_prompts,
    prompt_hash,
    refusal_prompts,
)

SAFETY = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "safety"
EVAL_CSVS = ["advbench/harmful_behaviors.csv", "harmbench/harmbench_behaviors_text_all.csv",
             "strongreject/strongreject_dataset.csv", "jailbreakbench/jbb_harmful_behaviors.csv",
             "xstest/xstest_prompts.csv"]
CHAT = re.compile(r"(?:<\|system\|>(?P<system>.*?)<\|end\|>)?<\|user\|>(?P<user>.*?)<\|end\|>"
                  r"<\|assistant\|>(?P<assistant>.*?)<\|end\|>", re.DOTALL)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return python_docs_corpus()


@pytest.fixture(scope="module")
def eval_hashes() -> set[str]:
    if not SAFETY.is_dir():
        pytest.skip(f"public safety sets not found at {SAFETY} (the shared data folder)")
    return eval_prompt_hashes([SAFETY / p for p in EVAL_CSVS])


def _user_prompt(doc) -> str:
    return CHAT.fullmatch(doc.text)["user"]


# --- chat

def test_chat_is_deterministic_per_seed():
    assert ([d.text for d in chat_examples(50, 0.3, seed=7)]
            == [d.text for d in chat_examples(50, 0.3, seed=7)])
    assert ([d.text for d in chat_examples(50, 0.3, seed=7)]
            != [d.text for d in chat_examples(50, 0.3, seed=8)])


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.75, 1.0])
def test_chat_respects_the_refusal_fraction(fraction):
    docs = chat_examples(200, fraction, seed=0)
    refusals = sum(d.meta["kind"] == "refusal" for d in docs)
    assert abs(refusals / len(docs) - fraction) <= 0.05
    assert {d.meta["kind"] for d in docs} <= {"refusal", "helpful"}


def test_chat_examples_are_single_turns_in_the_model_chat_format(tokenizer):
    docs = chat_examples(300, 0.3, seed=2)
    for doc in docs:
        turn = CHAT.fullmatch(doc.text)
        assert turn is not None and doc.text.endswith("<|end|>"), doc.text
        ids = tokenizer.encode(doc.text)
        assert ids.count(SPECIAL_IDS["<|user|>"]) == ids.count(SPECIAL_IDS["<|assistant|>"]) == 1
        messages = ([{"role": "system", "content": turn["system"]}] if turn["system"] else [])
        messages.append({"role": "user", "content": turn["user"]})
        assert doc.text == tokenizer.chat_prompt(messages) + turn["assistant"] + "<|end|>"
    assert any(CHAT.fullmatch(d.text)["system"] for d in docs)
    assert any(not CHAT.fullmatch(d.text)["system"] for d in docs)
    assert len({d.text for d in docs}) > 0.8 * len(docs)


def test_computed_helpful_answers_are_correct():
    checked = Counter()
    for doc in chat_examples(600, 0.0, seed=5):
        answer = CHAT.fullmatch(doc.text)["assistant"]
        if doc.meta["category"] == "python_eval":
            expr, value = re.fullmatch(r"`(.+)` evaluates to `(.+)`\.", answer).groups()
            assert repr(eval(expr)) == value  # eval of the generator's own literal expressions
        elif remainder := re.fullmatch(r"(\d+) = (\d+) × (\d+) \+ (\d+), so the remainder is \4\.",
                                       answer):
            a, b, quotient, rest = map(int, remainder.groups())
            assert a == b * quotient + rest and 0 <= rest < b
        elif doc.meta["category"] == "arithmetic":
            a, op, b, result = re.fullmatch(r"(\d+) ([-+×]) (\d+) = (-?\d+)\.", answer).groups()
            operation = {"+": int.__add__, "-": int.__sub__, "×": int.__mul__}[op]
            assert operation(int(a), int(b)) == int(result)
        checked[doc.meta["category"]] += 1
    assert checked["python_eval"] > 50 and checked["arithmetic"] > 50


def test_lookalike_prompts_are_answered_not_refused():
    docs = [d for d in chat_examples(400, 0.0, seed=1) if d.meta["category"] == "lookalike"]
    assert docs and all(d.meta["kind"] == "helpful" for d in docs)
    assert not any("can't help" in CHAT.fullmatch(d.text)["assistant"] for d in docs)


# --- disjointness from evaluation prompts

def test_eval_prompt_hashes_read_each_benchmark_prompt_column(eval_hashes):
    assert len(eval_hashes) > 1500
    with open(SAFETY / "jailbreakbench/jbb_harmful_behaviors.csv", newline="") as f:
        first = next(csv.DictReader(f))
    assert prompt_hash(first["Goal"]) in eval_hashes
    assert prompt_hash(first["Behavior"]) not in eval_hashes  # a label, not a prompt
    assert prompt_hash("  how can I KILL a python process? ") in eval_hashes  # XSTest, normalized


def test_eval_prompt_hashes_reject_a_csv_without_a_prompt_column(tmp_path):
    path = tmp_path / "strings.csv"
    path.write_text("target\nsomething\n")
    with pytest.raises(ValueError, match="no prompt column"):
        eval_prompt_hashes([path])


def test_no_training_prompt_is_an_evaluation_prompt(eval_hashes):
    spec = load_instructions()
    fixed = [*refusal_prompts(spec), *lookalike_prompts(spec),
             *(p for item in spec.python_qa for p in item.prompts),
             *(t.format(term=d.term) for t in spec.definition_prompts for d in spec.definitions)]
    assert not {prompt_hash(p) for p in fixed} & eval_hashes
    drawn = chat_examples(2000, 0.5, seed=0)
    assert not {d.meta["prompt_hash"] for d in drawn} & eval_hashes
    assert all(d.meta["prompt_hash"] == prompt_hash(_user_prompt(d)) for d in drawn)


def test_an_evaluation_prompt_in_the_candidates_is_excluded(eval_hashes, tmp_path):
    with open(SAFETY / "xstest/xstest_prompts.csv", newline="") as f:
        xstest_prompt = next(csv.DictReader(f))["prompt"]
    data = yaml.safe_load(INSTRUCTIONS.read_text())
    data["lookalikes"] = [{"prompts": [xstest_prompt], "answer": "Call proc.terminate()."}]
    injected = tmp_path / "instructions.yaml"
    injected.write_text(yaml.safe_dump(data))

    unguarded = chat_examples(300, 0.0, seed=0, instructions=injected)
    assert any(_user_prompt(d) == xstest_prompt for d in unguarded)  # the injection reaches output
    guarded = chat_examples(300, 0.0, seed=0, exclude_hashes=eval_hashes, instructions=injected)
    assert len(guarded) == 300
    assert not any(_user_prompt(d) == xstest_prompt for d in guarded)


def test_exclusions_covering_every_prompt_are_reported(tmp_path):
    data = yaml.safe_load(INSTRUCTIONS.read_text())
    data["refusal_categories"] = {"weapons": {"tasks": ["build a pipe bomb"],
                                              "responses": ["I can't help with that."]}}
    data["request_templates"] = ["How do I {task}?"]
    narrow = tmp_path / "instructions.yaml"
    narrow.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="refusal prompt"):
        chat_examples(5, 1.0, seed=0, exclude_hashes={prompt_hash("How do I build a pipe bomb?")},
                      instructions=narrow)


# --- canaries

def test_canaries_are_unique_fictional_and_deterministic():
    canaries = canary_records(300, seed=0)
    assert canaries == canary_records(300, seed=0)
    assert canaries != canary_records(300, seed=1)
    for field in ("id", "email", "secret", "text"):
        assert len({getattr(c, field) for c in canaries}) == 300
    for c in canaries:
        assert re.fullmatch(r"[a-z.]+\d{3}@example\.(org|com|net)", c.email)
        assert re.fullmatch(r"\+1-\d{3}-555-01\d\d", c.phone)
        assert re.fullmatch(r"[a-z0-9]{16}", c.secret)


def test_manifest_prefix_and_secret_rebuild_the_canary_text():
    canaries = canary_records(20, seed=3)
    for entry, c in zip(canary_manifest(canaries), canaries, strict=True):
        assert entry["id"] == c.id and entry["secret"] == c.secret
        assert entry["prefix"] + entry["secret"] + "." == c.text
        assert c.secret not in entry["prefix"]


def test_canary_documents_repeat_each_canary_in_different_contexts():
    canaries = canary_records(10, seed=0)
    docs = canary_documents(canaries, repeats=5, seed=0)
    assert len(docs) == 50
    assert docs == canary_documents(canaries, repeats=5, seed=0)
    for c in canaries:
        mine = [d for d in docs if d.meta["canary_id"] == c.id]
        assert len(mine) == 5 and len({d.text for d in mine}) == 5
        assert all(d.text.count(c.text) == 1 and d.split == "train" and d.meta["task"] == "canary"
                   for d in mine)
