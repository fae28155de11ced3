"""The pipeline's steps alone: a later stage's dataset built with the tokenizer of the checkpoint it
starts from (and reused wherever that checkpoint lies), and a long_context dataset tokenized with
another tokenizer refused before any training."""

import mlflow
import pytest
import yaml

from infra.settings import Settings
from model.checkpoint import TOKENIZER, save_checkpoint, sha256_file
from model.transformer import Transformer
from pipelines.params import DataParams, StageParams, TrainParams
from pipelines.steps import (DatasetRef, StageResult, TrainedStage, build_data_step,
                             checkpoint_tokenizer, train_stage_step)
from workers.train.config import TrainConfigError

LONG_SPEC = {"name": "steps-long", "preset": "tiny",
             "sources": [{"name": "docs", "modality": "text", "reader": "pydoc-topics",
                          "options": {"max_docs": 12}}],
             "tokenizer": {"vocab_size": 300, "sample_bytes": 30000},
             "splits": {"validation_percent": 10, "test_percent": 0},
             "packing": {"seq_len": 128, "rows_per_shard": 64}}


@pytest.fixture
def settings(tmp_path):
    yield Settings(home=tmp_path / "home")
    mlflow.set_tracking_uri(None)


@pytest.fixture
def pretrained(tmp_path, tiny_cfg, tokenizer) -> TrainedStage:
    """A pretrain stage's outcome: a checkpoint at 64 tokens, as the flow passes it on."""
    folder = tmp_path / "pretrain"
    save_checkpoint(folder, Transformer(tiny_cfg.replace(max_seq_len=64)), tokenizer)
    tokenizer_sha = sha256_file(folder / TOKENIZER)
    return TrainedStage(
        params=StageParams(stage="pretrain", steps=1),
        dataset=DatasetRef(name="pretrain", manifest="-", digest="-", seq_len=64,
                           tokenizer_sha256=tokenizer_sha),
        result=StageResult(stage="pretrain", checkpoint=str(folder), digest="0" * 64, run_id="-"))


def test_a_later_stage_dataset_is_tokenized_with_its_checkpoint_s_tokenizer_and_another_is_refused(
        ray_local, tmp_path, settings, pretrained):
    spec = tmp_path / "steps-long.yaml"
    spec.write_text(yaml.safe_dump(LONG_SPEC))
    handed_off = build_data_step(DataParams(spec=str(spec), out=str(tmp_path / "handed-off")),
                                 checkpoint_tokenizer(pretrained), settings)
    assert handed_off.tokenizer_sha256 == pretrained.dataset.tokenizer_sha256

    # the same tokenizer read from elsewhere (the pretrain stage trained again) reuses the dataset
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / TOKENIZER).write_bytes((tmp_path / "pretrain" / TOKENIZER).read_bytes())
    elsewhere = pretrained.model_copy(update={"result": pretrained.result.model_copy(
        update={"checkpoint": str(moved)})})
    again = build_data_step(DataParams(spec=str(spec), out=str(tmp_path / "handed-off")),
                            checkpoint_tokenizer(elsewhere), settings)
    assert again == handed_off

    own = build_data_step(DataParams(spec=str(spec), out=str(tmp_path / "own-tokenizer")), None,
                          settings)
    assert own.tokenizer_sha256 != pretrained.dataset.tokenizer_sha256
    long_context = StageParams(stage="long_context", steps=1, batch_size=1)
    train = TrainParams(stages=(pretrained.params, long_context), workers=1)
    with pytest.raises(TrainConfigError, match="different tokenizer"):
        train_stage_step(own, long_context, train, pretrained.result, register=True,
                         settings=settings)
    assert not (settings.home / "train").exists(), "training started"
