import json

from model.checkpoint import load_checkpoint
from workers.train.local import LocalTrainConfig, train_local


def test_local_training_run_learns_and_saves_a_verified_checkpoint(tmp_path):
    cfg = LocalTrainConfig(preset="tiny", steps=30, seq_len=64, batch_size=8, lr=3e-3,
                           warmup_steps=5, eval_every=10, corpus_bytes=200_000)
    seen = []
    summary = train_local(cfg, tmp_path, lambda step, result, val: seen.append((step, val)))
    assert [s for s, _ in seen] == list(range(30))
    assert [s for s, v in seen if v is not None] == [9, 19, 29]
    assert sum(summary.loss_history[-5:]) / 5 < summary.first_loss - 0.5
    assert summary.validation_loss_end < summary.validation_loss_start
    assert summary.tokens == 30 * 8 * 64 and 0 < summary.utilisation < 1
    model, tokenizer = load_checkpoint(tmp_path / "checkpoint")
    assert model.cfg.d_model == 64 and tokenizer.vocab_size == 512
    recorded = json.loads((tmp_path / "checkpoint" / "training_summary.json").read_text())
    assert recorded["summary"]["steps"] == 30
