"""Exact resumption: a run checkpointed after 3 of 6 steps and resumed from scratch (new model,
optimizer and data generator, other seeds) must reproduce the uninterrupted run bit for bit."""

import json
import pickle
import random
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import safetensors.torch
import torch

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.config import get_preset
from model.encoders import Media
from model.transformer import Transformer
from workers.data.pack import PackedSequences
from workers.train.data import Batch
from workers.train.loop import OptimConfig, make_optimizer, train_step
from workers.train.state import (STATE_JSON, TENSORS, TrainingState, TrainingStateError,
                                 restore_training_state, training_state_files)

OPTIM = OptimConfig(lr=3e-3, warmup_steps=2, total_steps=6)
SEED, OTHER_SEED, ROWS, WIDTH = 1234, 999, 4, 33


def _seed_everything(seed):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _batch(vocab_size, data_gen):
    tokens = torch.randint(20, vocab_size, (ROWS, WIDTH), generator=data_gen)  # (N, L + 1)
    cut = int(torch.randint(1, WIDTH - 1, ()))  # the global RNG on purpose: its restore counts too
    doc_ids = torch.zeros_like(tokens)
    doc_ids[:, cut:] = 1
    return Batch(PackedSequences(tokens, doc_ids), Media())


def _run(model, optimizer, data_gen, steps):
    return [train_step(model, optimizer, [_batch(model.cfg.vocab_size, data_gen)], s, OPTIM).loss
            for s in steps]


def _start(cfg, seed):
    _seed_everything(seed)
    model = Transformer(cfg)  # the tiny preset has no dropout and no router noise
    return model, make_optimizer(model, OPTIM), torch.Generator().manual_seed(seed)


def _rng_states(data_gen):
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), data_gen.get_state()


def _draws(data_gen):
    return (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(),
            torch.rand(3, generator=data_gen).tolist())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer):
    """An uninterrupted 6-step run that checkpoints after step 3 (tests that edit files copy it)."""
    model, optimizer, data_gen = _start(get_preset("tiny"), SEED)
    losses = _run(model, optimizer, data_gen, range(3))
    state = TrainingState(step=3, batches_done_in_epoch=3, tokens_seen=3 * ROWS * (WIDTH - 1),
                          seed=SEED, extra={"stage": "pretrain", "seq_len": WIDTH - 1,
                                            "expert_load": [[1, 2, 3, 4], [5, 6, 7, 8]]})
    folder = tmp_path_factory.mktemp("state") / "ckpt"
    save_checkpoint(folder, model, tokenizer,
                    extra_files=training_state_files(state, optimizer, {"data": data_gen}))
    at_save = _rng_states(data_gen)
    losses += _run(model, optimizer, data_gen, range(3, 6))
    return SimpleNamespace(folder=folder, state=state, losses=losses, cfg=model.cfg,
                           weights=model.state_dict(), at_save=at_save)


@pytest.fixture
def copied(trained, tmp_path):
    return Path(shutil.copytree(trained.folder, tmp_path / "ckpt"))


def _fresh_restore(folder):
    _seed_everything(OTHER_SEED)  # a different init: whatever matches must come from the checkpoint
    model, _ = load_checkpoint(folder)
    optimizer, data_gen = make_optimizer(model, OPTIM), torch.Generator().manual_seed(OTHER_SEED)
    state = restore_training_state(folder, optimizer, {"data": data_gen})
    return model, optimizer, data_gen, state


def test_resumed_run_matches_the_uninterrupted_run_bit_for_bit(trained):
    model, optimizer, data_gen, restored = _fresh_restore(trained.folder)
    assert restored == trained.state
    resumed = _run(model, optimizer, data_gen, range(restored.step, 6))

    assert trained.losses[:3] + resumed == trained.losses  # exact float equality, not approx
    weights = model.state_dict()
    assert weights.keys() == trained.weights.keys()
    for name, expected in trained.weights.items():
        assert torch.equal(weights[name], expected), name


def test_global_rngs_and_generators_continue_from_the_save_point(trained):
    (py, npy, cpu, gen), reference_gen = trained.at_save, torch.Generator()
    random.setstate(py), np.random.set_state(npy), torch.set_rng_state(cpu)
    reference_gen.set_state(gen)
    after_save = _draws(reference_gen)  # what every RNG gave next in the uninterrupted run

    _, _, restored_gen, _ = _fresh_restore(trained.folder)
    assert _draws(restored_gen) == after_save


def test_state_files_are_safetensors_and_json_never_pickle(trained, monkeypatch):
    raw = (trained.folder / TENSORS).read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])  # safetensors: u64 length, JSON header, raw data
    header = json.loads(raw[8:8 + header_len])
    assert {"state.0.exp_avg", "state.0.step", "rng.torch_cpu", "generator.data"} <= set(header)
    record = json.loads((trained.folder / STATE_JSON).read_text())
    assert record["optimizer"]["param_groups"][0]["betas"] == list(OPTIM.betas)

    def refuse(*args, **kwargs):
        raise AssertionError("restoring the training state must not unpickle")

    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                         (torch, "load"), (np, "load")]:
        monkeypatch.setattr(module, name, refuse)
    _, optimizer, _, _ = _fresh_restore(trained.folder)
    assert optimizer.param_groups[0]["betas"] == OPTIM.betas  # a tuple again, as AdamW made it


def test_tampered_optimizer_file_is_refused_by_the_digest(copied):
    raw = bytearray((copied / TENSORS).read_bytes())
    raw[-1] ^= 0xFF
    (copied / TENSORS).write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="optimizer.safetensors"):
        load_checkpoint(copied)


def test_a_missing_optimizer_tensor_is_named(copied, trained):
    tensors = safetensors.torch.load_file(copied / TENSORS)
    del tensors["state.0.exp_avg_sq"]
    safetensors.torch.save_file(tensors, copied / TENSORS)
    optimizer = make_optimizer(Transformer(trained.cfg), OPTIM)
    with pytest.raises(TrainingStateError, match=r"optimizer\.safetensors.*state\.0\.exp_avg_sq"):
        restore_training_state(copied, optimizer, {"data": torch.Generator()})


def test_an_optimizer_with_other_parameters_is_refused_untouched(trained):
    optimizer = make_optimizer(Transformer(trained.cfg.replace(n_layers=1)), OPTIM)
    with pytest.raises(TrainingStateError, match=r"state\.json.*parameters"):
        restore_training_state(trained.folder, optimizer, {"data": torch.Generator()})
    assert not optimizer.state  # nothing was loaded


def test_generators_must_match_the_saved_ones(trained):
    optimizer = make_optimizer(Transformer(trained.cfg), OPTIM)
    with pytest.raises(TrainingStateError, match=r"\['data'\] were not passed"):
        restore_training_state(trained.folder, optimizer)


def test_extra_must_be_plain_json(trained):
    state = TrainingState(extra={"expert_load": torch.zeros(2)})
    with pytest.raises(TrainingStateError, match="tolist"):
        training_state_files(state, make_optimizer(Transformer(trained.cfg), OPTIM))
