"""Profiles are refused before any work when their stages cannot run, naming the field."""

import pytest
from pydantic import ValidationError

from pipelines.params import get_profile

PRETRAIN = {"stage": "pretrain", "steps": 1}


def _refused(**overrides) -> str:
    with pytest.raises(ValidationError) as refused:
        get_profile("tiny", **overrides)
    return str(refused.value)


def test_the_tiny_profile_trains_four_stages_on_their_own_corpora():
    stages = get_profile("tiny").train.stages
    assert [(s.stage, s.data and s.data.spec) for s in stages] == [
        ("pretrain", None), ("long_context", "tiny-long"), ("sft", "tiny-sft"),
        ("preference", "tiny-preference")]


def test_stages_that_cannot_run_are_refused_naming_the_field():
    not_longer = _refused(train={"stages": [PRETRAIN, {"stage": "long_context", "steps": 1}]})
    assert "train.stages[1].data (long_context, spec 'tiny')" in not_longer
    assert "not longer than the 512" in not_longer
    too_long = _refused(train={"stages": [PRETRAIN, {"stage": "sft", "steps": 1,
                                                     "data": {"spec": "tiny-long"}}]})
    assert "train.stages[1].data (sft, spec 'tiny-long')" in too_long
    unknown = _refused(train={"stages": [PRETRAIN, {"stage": "sft", "steps": 1,
                                                    "data": {"spec": "nowhere"}}]})
    assert "train.stages[1].data" in unknown and "no corpus spec 'nowhere'" in unknown
    twice = _refused(train={"stages": [PRETRAIN, {"stage": "sft", "steps": 1},
                                       {"stage": "sft", "steps": 1}]})
    assert "each stage once" in twice
    early = _refused(train={"stages": [PRETRAIN, {"stage": "preference", "steps": 1,
                                                  "data": {"spec": "tiny-preference"}}]})
    assert "preference tunes the instruction-tuned model" in early
    no_stage = _refused(train={"stages": [PRETRAIN]}, eval={"suite": "tiny", "dataset_stage": "sft"})
    assert "eval.dataset_stage=sft" in no_stage


def test_a_run_may_not_name_who_approves_it():
    """Only the demo profiles' own reviewer account approves unattended; a run's parameters
    cannot name another reviewer, nor keep that one outside the demo profiles."""
    assert get_profile("demo").promote.reviewer == "demo-reviewer"
    assert get_profile("capable").promote.reviewer is None  # waits for a reviewer's account
    another = _refused(promote={"policy": "tiny", "reviewer": "mallory"})
    assert "promote.reviewer" in another and "'demo-reviewer'" in another
    with pytest.raises(ValidationError, match="only the demo and tiny profiles approve"):
        get_profile("capable", promote={"policy": "default", "reviewer": "demo-reviewer"})
    with pytest.raises(ValidationError, match="triggered_by"):
        get_profile("tiny", triggered_by="alice")  # who triggered is read, never given
