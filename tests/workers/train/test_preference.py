"""DPO, the preference stage's objective: the loss against its closed form, the reference-free
variant, and a few steps on the tiny model widening the chosen-over-rejected margin on held-out
pairs (the Ray Train stage, its resume and registration: test_trainer.py)."""

import copy
import math

import pyarrow.parquet as pq
import pytest
import torch

from model.config import get_preset
from model.tokenizer import Tokenizer
from model.transformer import Transformer
from workers.data.build import build_dataset
from workers.data.runners import InProcessRunner
from workers.data.spec import load_spec
from workers.train.loop import OptimConfig, make_optimizer, train_step
from workers.train.preference import (collate_pairs, dpo_loss, dpo_objective,
                                      preference_validation)


def test_dpo_loss_is_its_closed_form():
    beta = 0.2
    chosen, rejected = torch.tensor([-10.0, -4.0]), torch.tensor([-12.0, -3.0])
    ref_chosen, ref_rejected = torch.tensor([-11.0, -5.0]), torch.tensor([-11.0, -5.0])
    terms = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
    logits = [((-10 + 11) - (-12 + 11)), ((-4 + 5) - (-3 + 5))]  # 2 and -1
    expected = sum(math.log1p(math.exp(-beta * z)) for z in logits) / 2
    assert terms.loss.item() == pytest.approx(expected, rel=1e-6)
    assert terms.chosen_rewards.tolist() == pytest.approx([0.2, 0.2])
    assert terms.rejected_rewards.tolist() == pytest.approx([-0.2, 0.4])
    stats = terms.stats(chosen, rejected)
    assert stats["reward_accuracy"] == 0.5
    assert stats["reward_margin"] == pytest.approx((0.4 - 0.2) / 2)
    # RPO: plus α times the chosen responses' mean per-token NLL
    rpo = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta,
                   chosen_tokens=torch.tensor([5.0, 2.0]), chosen_nll_weight=0.5)
    assert rpo.loss.item() == pytest.approx(expected + 0.5 * (10 / 5 + 4 / 2) / 2, rel=1e-6)
    # reference-free: the reference's log-probabilities drop out
    free = dpo_loss(chosen, rejected, None, None, beta)
    assert free.loss.item() == pytest.approx(
        (math.log1p(math.exp(-beta * 2)) + math.log1p(math.exp(-beta * -1))) / 2, rel=1e-6)


def test_the_loss_is_log_2_where_the_policy_is_the_reference():
    logp = torch.tensor([-3.0, -7.0])
    assert dpo_loss(logp, logp - 1, logp, logp - 1, 0.5).loss.item() == pytest.approx(math.log(2))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """The tiny profile's preference dataset (its own tokenizer here), as PairBatches."""
    out = tmp_path_factory.mktemp("pairs")
    result = build_dataset(load_spec("tiny-preference"), str(out),
                           str(tmp_path_factory.mktemp("cache")), runner=InProcessRunner())
    split = {name: pq.read_table([str(out / s["path"]) for s in entry["shards"]])
             for name, entry in result.manifest["splits"].items() if entry["rows"]}
    tokenizer = Tokenizer.from_str((out / "tokenizer.json").read_text())
    return tokenizer, {name: collate_pairs(t.to_pydict()) for name, t in split.items()}


def test_a_few_dpo_steps_widen_the_margin_on_held_out_pairs(pairs):
    tokenizer, split = pairs
    torch.manual_seed(0)
    model = Transformer(get_preset("tiny").replace(vocab_size=max(512, tokenizer.vocab_size)))
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    objective = dpo_objective(reference, beta=0.1)

    def held_out():
        loss, correct, n = preference_validation(model, reference, [split["validation"]], 0.1)
        return loss / n, correct / n

    before_loss, _ = held_out()
    assert before_loss == pytest.approx(math.log(2), abs=1e-4)  # the policy is the reference
    optim = OptimConfig(lr=1e-3, warmup_steps=0, total_steps=12)
    optimizer = make_optimizer(model, optim)
    train = split["train"]
    results = []
    for step in range(12):
        index = torch.randperm(len(train.chosen))[:8]
        batch = type(train)(train.chosen.rows(index), train.rejected.rows(index))
        results.append(train_step(model, optimizer, [batch], step, optim, objective=objective))
    assert set(results[0].stats) == {"reward_margin", "reward_accuracy", "chosen_logp",
                                     "rejected_logp"}
    after_loss, after_accuracy = held_out()
    assert after_loss < before_loss - 0.1
    assert after_accuracy >= 0.75
    assert results[-1].stats["reward_margin"] > results[0].stats["reward_margin"]
