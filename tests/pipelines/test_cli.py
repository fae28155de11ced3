import json

import pytest
from typer.testing import CliRunner

from model.checkpoint import save_checkpoint
from model.transformer import Transformer
from pipelines.cli import app

runner = CliRunner()


@pytest.fixture
def checkpoint(tmp_path, tiny_cfg, tokenizer):
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, Transformer(tiny_cfg), tokenizer)
    return folder


def test_presets_lists_parameter_counts():
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0, result.output
    for name in ("tiny", "small", "base"):
        assert name in result.output
    assert "155.6M" in result.output  # base: active parameters


def test_verify_accepts_a_good_checkpoint_and_refuses_a_tampered_one(checkpoint):
    ok = runner.invoke(app, ["verify", str(checkpoint)])
    assert ok.exit_code == 0, ok.output
    assert "model.safetensors" in json.loads(ok.output)["verified"]
    (checkpoint / "config.json").write_text("{}")
    bad = runner.invoke(app, ["verify", str(checkpoint)])
    assert bad.exit_code == 1 and "config.json" in bad.output


def test_generate_continues_a_prompt(checkpoint):
    result = runner.invoke(app, ["generate", str(checkpoint), "def main():", "--max-tokens", "5"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("def main():") and "finish_reason=length" in result.output
    refused = runner.invoke(app, ["generate", str(checkpoint), "x", "--top-p", "2"])
    assert refused.exit_code == 2 and "top_p" in refused.output


def test_export_hf_writes_a_mixtral_folder(checkpoint, tmp_path):
    result = runner.invoke(app, ["export-hf", str(checkpoint), str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "mixtral"


def test_train_refuses_a_bad_dataset_before_any_work(tmp_path):
    result = runner.invoke(app, ["train", "--dataset", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "unreadable manifest" in result.output


def test_train_takes_every_train_config_field_as_an_option():
    from typer.main import get_command

    from workers.train.config import StageOptions, TrainConfig

    train = get_command(app).commands["train"]
    options = {p.name: p for p in train.params}
    assert set(options) == set(TrainConfig.model_fields) - {"resources_per_worker"}
    assert set(StageOptions.model_fields) < set(options)  # the flows' stage options too
    assert options["dataset"].required and options["batch_size"].default == 8
    assert options["batch_size"].help == TrainConfig.model_fields["batch_size"].description


def test_train_options_are_validated_by_the_config_naming_the_field(tmp_path):
    result = runner.invoke(app, ["train", "--dataset", str(tmp_path), "--steps", "0",
                                 "--lr", "-1"])
    output = " ".join(result.output.split())  # rich wraps lines
    assert result.exit_code == 2
    assert "steps: Input should be greater than or equal to 1" in output
    assert "lr: Input should be greater than 0" in output
    result = runner.invoke(app, ["train", "--dataset", str(tmp_path), "--stage", "dpo"])
    assert result.exit_code == 2 and "dpo" in result.output  # not a stage: refused by the CLI


def test_run_train_steps_set_every_stage_or_the_stages_named():
    from pipelines.cli_pipeline import stage_steps

    stages = ["pretrain", "long_context", "sft"]
    assert stage_steps("3", stages) == {"pretrain": 3, "long_context": 3, "sft": 3}
    assert stage_steps("sft=3, pretrain=5", stages) == {"sft": 3, "pretrain": 5}
    with pytest.raises(ValueError, match="this profile's stages: pretrain, long_context, sft"):
        stage_steps("dpo=3", stages)
    with pytest.raises(ValueError, match="give N, or STAGE=N"):
        stage_steps("three", stages)


def test_run_stages_keep_the_profiles_order():
    from pipelines.cli_pipeline import kept_stages

    stages = ["pretrain", "long_context", "sft", "preference"]
    assert kept_stages("long_context, pretrain", stages) == ["pretrain", "long_context"]
    with pytest.raises(ValueError, match="this profile's stages: pretrain, long_context"):
        kept_stages("pretrain,dpo", stages)


def test_run_refuses_bad_train_steps_and_stages_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGMIX_HOME", str(tmp_path))
    result = runner.invoke(app, ["run", "--profile", "tiny", "--train-steps", "dpo=3"])
    assert result.exit_code == 2 and "dpo=3" in result.output
    result = runner.invoke(app, ["run", "--profile", "tiny", "--train-steps", "sft=0"])
    assert result.exit_code == 2 and "greater than or equal to 1" in " ".join(result.output.split())
    for stages, reason in (("sft", "the first stage must be pretrain"),
                           ("pretrain,preference", "right after sft")):
        result = runner.invoke(app, ["run", "--profile", "tiny", "--stages", stages])
        assert result.exit_code == 2 and reason in " ".join(result.output.split()), stages
    assert not any(tmp_path.iterdir())  # no service started, nothing written
