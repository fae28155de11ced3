"""The Mixtral export, checked against transformers' own MixtralForCausalLM: same logits."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from model.checkpoint import save_checkpoint  # noqa: E402
from model.config import get_preset  # noqa: E402
from model.hf_export import ExportError, export_mixtral, mixtral_config, mixtral_state_dict  # noqa: E402
from model.tokenizer import BOS_ID, EOS_ID, SPECIAL_TOKENS, Tokenizer  # noqa: E402
from workers.data.sources import python_docs_corpus  # noqa: E402
from model.transformer import Transformer  # noqa: E402


def make_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(get_preset("tiny", **overrides)).eval()
    with torch.no_grad():  # norms are all ones at init: perturb them so a wrong mapping shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def random_ids(model: Transformer, length: int) -> torch.Tensor:
    # no special tokens: media placeholders would need media
    g = torch.Generator().manual_seed(1)
    return torch.randint(len(SPECIAL_TOKENS), model.cfg.vocab_size, (2, length), generator=g)


def hf_logits(folder, ids: torch.Tensor) -> torch.Tensor:
    hf, info = transformers.MixtralForCausalLM.from_pretrained(
        folder, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        return hf.eval()(ids).logits


def assert_same_logits(model: Transformer, folder, length: int) -> None:
    ids = random_ids(model, length)
    with torch.no_grad():
        ours = model(ids).logits
    torch.testing.assert_close(hf_logits(folder, ids), ours, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("overrides, length", [
    ({}, 48),
    ({"tie_embeddings": True}, 48),
    ({"rope_scaling": "linear", "rope_factor": 2.0, "max_seq_len": 1024}, 256),
    # past the original 512 positions, where YaRN's interpolation and attention factor matter
    ({"rope_scaling": "yarn", "rope_factor": 4.0, "max_seq_len": 2048}, 768),
    ({"rope_scaling": "ntk", "rope_factor": 4.0, "max_seq_len": 2048}, 768),
], ids=["plain", "tied", "linear", "yarn", "ntk"])
def test_logits_match_transformers_mixtral(tmp_path, overrides, length):
    model = make_model(**overrides)
    export_mixtral(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["MixtralForCausalLM"]
    assert_same_logits(model, tmp_path, length)


def test_state_dict_tensors_are_owned_and_contiguous():
    model = make_model()
    state = mixtral_state_dict(model)
    ptrs = {p.data_ptr() for p in model.parameters()}
    assert all(t.is_contiguous() and t.data_ptr() not in ptrs for t in state.values())
    assert state["model.layers.0.block_sparse_moe.experts.0.w1.weight"].shape == (96, 64)  # (H, D)
    assert state["model.layers.0.block_sparse_moe.experts.0.w2.weight"].shape == (64, 96)  # (D, H)


@pytest.mark.parametrize("field", ["n_shared_experts", "n_dense_layers"])
def test_refuses_what_mixtral_cannot_express(tmp_path, field):
    model = Transformer(get_preset("tiny", **{field: 1}))
    with pytest.raises(ExportError, match=field):
        mixtral_config(model.cfg)
    with pytest.raises(ExportError, match=field):
        export_mixtral(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before writing anything


def test_export_from_checkpoint_folder(tmp_path):
    model = make_model()
    tokenizer = Tokenizer.train(python_docs_corpus()[:200], 512)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    out = export_mixtral(tmp_path / "ckpt", tmp_path / "hf")

    assert (out / "tokenizer.json").read_bytes() == (tmp_path / "ckpt" / "tokenizer.json").read_bytes()
    assert_same_logits(model, out, 48)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "<|user|>What does the for statement do?<|end|>"
    assert hf_tok(text)["input_ids"] == tokenizer.encode(text)
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id) == (BOS_ID, EOS_ID)
