"""Training config: paths are resolved where the user typed them, not where workers run; what
the command line cannot spell."""

import os

import pytest

from workers.train.config import TrainConfig, parse_train_config


def test_relative_paths_are_made_absolute_in_the_driver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(dataset="datasets/demo", stage="sft", init_from="train/ckpt",
                      storage_path="s3://bucket/runs")
    assert cfg.dataset == os.path.join(tmp_path, "datasets/demo")
    assert cfg.init_from == os.path.join(tmp_path, "train/ckpt")
    assert cfg.storage_path == "s3://bucket/runs"


@pytest.mark.parametrize("given, registered", [("none", None), ("None", None), ("", None),
                                               (None, None), ("longmix", "longmix")])
def test_none_on_the_command_line_registers_nothing(given, registered):
    cfg = parse_train_config({"dataset": "/data/demo", "registered_model": given})
    assert cfg.registered_model == registered
