"""Export the text backbone as a Hugging Face Mixtral checkpoint (config.json + model.safetensors).

Why: the export is the proof that the architecture is the real thing. Our blocks, GQA attention,
rotate-half RoPE, float32 top-k softmax router (renormalised over the chosen k) and SwiGLU experts
are meant to be Mixtral's; loading the exported weights into `transformers.MixtralForCausalLM`, an
implementation we did not write, and getting the same logits checks that claim end to end
(tests/model/test_hf_export.py). It also lets the Hugging Face ecosystem serve our models.

Only the text backbone is exported: the modality encoders (image/audio/video) have no Mixtral
counterpart, so a multimodal checkpoint exports as a text-only model. Configs Mixtral cannot
express exactly (shared expert, dense first layers) are refused with ExportError rather than
exported approximately. RoPE scalings map exactly: linear and YaRN (beta 32/1, truncated
correction range, attention factor 0.1 ln(factor) + 1) have the same formulas in
transformers' rope utilities; static NTK is plain RoPE with a stretched base, so it exports as
the default rope type with that base. The config uses the transformers >= 5 layout
(`rope_parameters`). Training-only terms do not carry over exactly: HF has no router z-loss, and
its load-balancing loss counts top-k assignments per token and averages over layers, so
`router_aux_loss_coef` only matters if the export is fine-tuned with transformers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from model.checkpoint import TOKENIZER, load_checkpoint
from model.config import ModelConfig
from model.tokenizer import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS
from model.transformer import Transformer


class ExportError(ValueError):
    """The config uses something Mixtral cannot express exactly; the message names the field."""


def _rope_parameters(cfg: ModelConfig) -> dict:
    theta, factor = float(cfg.rope_theta), float(cfg.rope_factor)
    if cfg.rope_scaling == "none":
        return {"rope_type": "default", "rope_theta": theta}
    if cfg.rope_scaling == "linear":
        return {"rope_type": "linear", "rope_theta": theta, "factor": factor}
    if cfg.rope_scaling == "ntk":
        # static NTK-aware scaling only stretches the base: bit-for-bit the default rope with this
        # theta (the same Python-float expression as model/rope.py). HF's "dynamic" type is not
        # it: that one depends on the current sequence length.
        d = cfg.head_dim
        return {"rope_type": "default", "rope_theta": theta * factor ** (d / (d - 2))}
    if cfg.rope_scaling == "yarn":
        # spelled out, so HF's defaults can never drift from model/rope.py's constants
        return {"rope_type": "yarn", "rope_theta": theta, "factor": factor,
                "original_max_position_embeddings": cfg.rope_original_max_seq_len,
                "beta_fast": 32.0, "beta_slow": 1.0, "truncate": True}
    raise ExportError(f"rope_scaling={cfg.rope_scaling!r} has no exact Mixtral equivalent")


def check_exportable(cfg: ModelConfig) -> None:
    if cfg.n_shared_experts:
        raise ExportError(f"n_shared_experts={cfg.n_shared_experts}: Mixtral has no shared expert")
    if cfg.n_dense_layers:
        raise ExportError(f"n_dense_layers={cfg.n_dense_layers}: every Mixtral layer is sparse MoE")
    _rope_parameters(cfg)


def mixtral_config(cfg: ModelConfig, dtype: str = "float32") -> dict:
    """The config.json of a MixtralForCausalLM equivalent to our text backbone."""
    check_exportable(cfg)
    return {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.expert_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "num_local_experts": cfg.n_experts,
        "num_experts_per_tok": cfg.top_k,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": _rope_parameters(cfg),
        "tie_word_embeddings": cfg.tie_embeddings,
        "sliding_window": None,  # full causal attention, as ours
        "attention_dropout": 0.0,
        "router_jitter_noise": 0.0,
        "router_aux_loss_coef": cfg.aux_loss_weight,
        "output_router_logits": False,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "dtype": dtype,
        "torch_dtype": dtype,  # the pre-5.0 name of the same field
    }


def _own(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy sharing no storage (safetensors refuses shared or strided tensors)."""
    return t.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)


def mixtral_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Our text-backbone weights under the Mixtral hub names (per-expert w1/w2/w3 Linears)."""
    cfg = model.cfg
    check_exportable(cfg)
    H = cfg.expert_hidden
    out = {"model.embed_tokens.weight": _own(model.tok_emb.weight)}
    for i, block in enumerate(model.layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = _own(block.attn_norm.weight)
        for ours, theirs in (("wq", "q"), ("wk", "k"), ("wv", "v"), ("wo", "o")):
            out[p + f"self_attn.{theirs}_proj.weight"] = _own(getattr(block.attn, ours).weight)
        out[p + "post_attention_layernorm.weight"] = _own(block.ffn_norm.weight)
        moe = block.ffn
        out[p + "block_sparse_moe.gate.weight"] = _own(moe.router.weight)  # (E, D)
        for j in range(cfg.n_experts):
            e = p + f"block_sparse_moe.experts.{j}."
            gate_up = moe.w_gate_up[j]  # (D, 2H): x @ w, so Linear weights are the transposes
            out[e + "w1.weight"] = _own(gate_up[:, :H].T)  # (H, D) gate
            out[e + "w3.weight"] = _own(gate_up[:, H:].T)  # (H, D) up
            out[e + "w2.weight"] = _own(moe.w_down[j].T)  # (D, H) down
    out["model.norm.weight"] = _own(model.norm.weight)
    if not cfg.tie_embeddings:  # tied: HF rebuilds lm_head from embed_tokens
        out["lm_head.weight"] = _own(model.lm_head.weight)
    return out


def _tokenizer_config() -> dict:
    # lets AutoTokenizer open the folder: tokenizer.json already holds the whole tokenizer
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIAL_TOKENS[BOS_ID],
            "eos_token": SPECIAL_TOKENS[EOS_ID], "pad_token": SPECIAL_TOKENS[PAD_ID],
            "add_bos_token": False, "add_eos_token": False}


def export_mixtral(source: Transformer | str | Path, out_dir: str | Path) -> Path:
    """Write a Mixtral checkpoint of a model or of a longmix checkpoint folder (with its tokenizer)."""
    folder = None
    if isinstance(source, (str, Path)):
        folder = Path(source)
        model, _ = load_checkpoint(folder)  # verifies the digests
    else:
        model = source
    dtype = str(model.tok_emb.weight.dtype).removeprefix("torch.")
    config = mixtral_config(model.cfg, dtype)  # refuses before anything is written
    state = mixtral_state_dict(model)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    if folder is not None:
        shutil.copyfile(folder / TOKENIZER, out / "tokenizer.json")
        (out / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(), indent=2))
    return out
