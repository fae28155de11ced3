"""Training config: paths are resolved where the user typed them, not where workers run."""

import os

from workers.train.config import TrainConfig


def test_relative_paths_are_made_absolute_in_the_driver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(dataset="datasets/demo", stage="sft", init_from="train/ckpt",
                      storage_path="s3://bucket/runs")
    assert cfg.dataset == os.path.join(tmp_path, "datasets/demo")
    assert cfg.init_from == os.path.join(tmp_path, "train/ckpt")
    assert cfg.storage_path == "s3://bucket/runs"
