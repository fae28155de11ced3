"""A lineage holds only a chain: each stage from the previous stage's checkpoint, one tokenizer."""

import pytest
from pydantic import ValidationError

from pipelines.lineage import Lineage, StageRecord


def _stage(stage: str, checkpoint: str, init: str | None, tokenizer: str = "t" * 64) -> StageRecord:
    return StageRecord(stage=stage, dataset=stage, dataset_digest="d" * 64,
                       tokenizer_sha256=tokenizer, checkpoint_digest=checkpoint, init_digest=init,
                       run_id="run", steps=1, seq_len=512)


def test_a_chained_lineage_holds_and_its_digest_names_its_content():
    lineage = Lineage(stages=(_stage("pretrain", "a", None), _stage("long_context", "b", "a"),
                              _stage("sft", "c", "b")))
    assert lineage.digest() == Lineage.model_validate_json(lineage.model_dump_json()).digest()
    assert lineage.digest() != Lineage(stages=lineage.stages[:2]).digest()


def test_a_broken_chain_or_another_tokenizer_is_refused_naming_the_stage():
    with pytest.raises(ValidationError, match=r"stages\[1\] \(long_context\) starts from checkpoint x"):
        Lineage(stages=(_stage("pretrain", "a", None), _stage("long_context", "b", "x")))
    with pytest.raises(ValidationError, match=r"stages\[0\] \(pretrain\) starts from checkpoint a"):
        Lineage(stages=(_stage("pretrain", "b", "a"),))
    with pytest.raises(ValidationError, match=r"stages\[1\] \(sft\): its dataset's tokenizer"):
        Lineage(stages=(_stage("pretrain", "a", None), _stage("sft", "b", "a", tokenizer="u" * 64)))
