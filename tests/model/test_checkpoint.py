import json

import pytest
import torch

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.transformer import Transformer


@pytest.fixture
def saved(tmp_path, tiny_cfg, tokenizer):
    model = Transformer(tiny_cfg.replace(n_shared_experts=1, n_dense_layers=1))
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, model, tokenizer, extra_files={"training_state/step.json": b'{"step": 3}'})
    return model, folder


def test_round_trip_is_bit_exact(saved, tokenizer):
    model, folder = saved
    loaded, tok = load_checkpoint(folder)
    assert loaded.cfg == model.cfg and tok.digest() == tokenizer.digest()
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert torch.equal(original[name], restored[name]), name
    digest = json.loads((folder / "digest.json").read_text())["files"]
    assert set(digest) == {"model.safetensors", "config.json", "tokenizer.json",
                           "training_state/step.json"}


def test_tied_embeddings_round_trip(tmp_path, tiny_cfg, tokenizer):
    model = Transformer(tiny_cfg.replace(tie_embeddings=True))
    save_checkpoint(tmp_path / "tied", model, tokenizer)
    loaded, _ = load_checkpoint(tmp_path / "tied")
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json",
                                  "training_state/step.json"])
def test_a_tampered_file_is_refused_by_name(saved, name):
    _, folder = saved
    path = folder / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.") + ".*does not match"):
        load_checkpoint(folder)


def test_truncated_missing_and_undigested_checkpoints_are_refused(saved):
    _, folder = saved
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(folder)
    weights.unlink()
    with pytest.raises(CheckpointError, match="model.safetensors.*missing"):
        load_checkpoint(folder)
    (folder / "digest.json").unlink()
    with pytest.raises(CheckpointError, match="no digest.json"):
        load_checkpoint(folder)


def test_weights_file_holds_only_tensors(saved):
    # safetensors: a JSON header and raw bytes; nothing a loader could execute
    _, folder = saved
    raw = (folder / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    assert header["__metadata__"]["format"] == "longmix"
    assert all(v["dtype"] == "F32" for k, v in header.items() if k != "__metadata__")
