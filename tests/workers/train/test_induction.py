"""A positive control for the model and the training loop: a small model trained on repeated
random sequences learns to copy by content (an induction head), the mechanism that needle
retrieval is built on. The period and the offset of the repeat vary from row to row, so a model
that copies by position cannot pass; tokens seen for the first time stay at chance."""

import math

import torch

from model.config import get_preset
from model.encoders import Media
from model.transformer import Transformer
from workers.data.copies import repeated_rows
from workers.data.pack import PackedSequences
from workers.train.data import Batch
from workers.train.loop import OptimConfig, make_optimizer, train_step

VOCAB = range(32, 96)  # 64 ordinary tokens, clear of the special and placeholder ids
WIDTH, PERIODS = 41, (4, 13)  # 40 inputs; a random stretch repeated with period 4..12


def induction_rows(n: int, generator: torch.Generator) -> tuple[PackedSequences, torch.Tensor]:
    """Packed copy rows; the mask marks targets that repeat an earlier token."""
    tokens, repeats = repeated_rows(n, WIDTH, VOCAB, PERIODS, generator)
    return PackedSequences(tokens, torch.zeros_like(tokens)), repeats[:, 1:]


def test_a_small_model_learns_to_copy_by_content():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    cfg = get_preset("tiny", d_model=64, n_heads=4, n_kv_heads=2, expert_hidden=128,
                     max_seq_len=64, rope_original_max_seq_len=64)
    model = Transformer(cfg)
    optim = OptimConfig(lr=3e-3, warmup_steps=50, total_steps=500, weight_decay=0.1)
    optimizer = make_optimizer(model, optim)
    for step in range(optim.total_steps):
        rows, _ = induction_rows(64, generator)
        train_step(model, optimizer, [Batch(rows, Media())], step, optim)

    rows, repeats = induction_rows(256, generator)
    model.eval()
    with torch.no_grad():
        logits = model(rows.tokens[:, :-1]).logits  # (N, T, V)
    targets = rows.tokens[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    chance = math.log(len(VOCAB))
    copied = (logits.argmax(-1) == targets)[repeats].float().mean()
    assert nll[~repeats].mean() > 0.9 * chance  # unseen tokens cannot be predicted
    assert nll[repeats].mean() < 0.6 * chance  # repeated ones are: copied by content
    assert copied > 0.3  # chance: 1/64
