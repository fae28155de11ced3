"""Training configuration: one stage of the run (pretrain -> long_context -> sft -> preference),
validated against the dataset manifest and the previous stage's checkpoint before any worker
starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from model.config import ConfigError, ModelConfig, get_preset

Stage = Literal["pretrain", "long_context", "sft", "preference"]


class TrainConfigError(ValueError):
    """The training configuration cannot run; the message names the field or file."""


class StageOptions(BaseModel):
    """How one stage trains: declared once, for `longmix train` (TrainConfig, and its CLI options,
    generated from these fields) and for the flows' stages (pipelines.params.StageParams)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(200, ge=1, description="optimizer steps")
    batch_size: int = Field(8, ge=1, description="sequences per worker per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="the cosine decay's floor, over lr")
    warmup_steps: int | None = Field(None, ge=0, description="default: 5% of the steps")
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, gt=0, description="gradient norm clip")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on GPU, fp32 on CPU")
    seed: int = 0
    shuffle: bool = Field(True, description="read the train split in one permutation of its rows "
                                            "(seeded by seed); off: in the order it was built")
    seq_len: int | None = Field(None, ge=16,
                                description="default and maximum: what the dataset packs")
    rope_scaling: Literal["linear", "ntk", "yarn"] = Field(
        "yarn", description="how long_context extends RoPE")
    eval_every: int = Field(50, ge=1, description="validation loss every N steps")
    eval_batches: int = Field(4, ge=1, description="validation batches per evaluation")
    checkpoint_every: int = Field(50, ge=1, description="a checkpoint every N steps")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept (the newest)")
    beta: float = Field(0.1, gt=0, description="preference: DPO's beta, how far the policy may "
                                               "move from the reference")
    reference_free: bool = Field(False, description="preference: DPO without a reference model")
    chosen_nll_weight: float = Field(
        0.0, ge=0, description="preference: weight of the chosen responses' per-token NLL added "
                               "to DPO's loss (RPO); 0: DPO alone")


class TrainConfig(StageOptions):
    """One stage of a run: its options, its data and where it starts from, and the workers."""

    stage: Stage = "pretrain"
    dataset: str = Field(description="the dataset's manifest.json URI, or its folder")
    init_from: str | None = Field(
        None, description="the previous stage's checkpoint folder (long_context, sft)")
    preset: str | None = Field(None, description="model preset (pretrain; default: the dataset's)")

    workers: int = Field(2, ge=1, description="Ray Train workers")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    resources_per_worker: dict[str, float] = Field(default_factory=dict)  # e.g. {"TPU": 4}
    fsdp: bool = Field(False, description="shard parameters with FSDP2 instead of replicating "
                                          "them with DDP (needs use_gpu)")
    max_failures: int = Field(2, ge=0, description="worker failures survived by resuming")

    storage_path: str | None = Field(
        None, description="checkpoints: a folder or s3:// prefix (default under LONGMIX_HOME)")
    run_name: str | None = None
    registered_model: str | None = Field(
        "longmix", description="the MLflow registered model; none: do not register")

    @field_validator("registered_model", mode="before")
    @classmethod
    def _none_registers_nothing(cls, name: str | None) -> str | None:
        # the command line cannot spell None: `--registered-model none` (or "") says it
        return None if isinstance(name, str) and name.strip().lower() in ("", "none") else name

    @field_validator("dataset", "init_from", "storage_path")
    @classmethod
    def _absolute(cls, uri: str | None) -> str | None:
        # resolved here, in the driver's working directory: Ray workers run in another one
        from infra.storage import absolute  # pyarrow: not at import, which `longmix --help` pays

        return absolute(uri) if uri else uri

    @model_validator(mode="after")
    def _stage_needs(self) -> "TrainConfig":
        if self.stage != "pretrain" and not self.init_from:
            raise ValueError(f"stage {self.stage} continues from the previous stage: give init_from")
        if self.warmup_steps is not None and self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} exceeds steps={self.steps}")
        if self.fsdp and not self.use_gpu:
            raise ValueError("fsdp shards across accelerators: it needs use_gpu")
        return self


def warmup_steps(cfg: TrainConfig) -> int:
    return cfg.warmup_steps if cfg.warmup_steps is not None else max(1, cfg.steps // 20)


def parse_train_config(data: dict) -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}"
                             for err in e.errors())
        raise TrainConfigError(problems) from None


class Plan(BaseModel):
    """What a validated stage will do: resolved before any worker starts."""

    model_config = ConfigDict(frozen=True)

    manifest: dict
    model: dict  # ModelConfig.to_dict() of the model to train
    seq_len: int
    init_from: str | None


def plan_stage(cfg: TrainConfig) -> Plan:
    """Check the dataset, the previous checkpoint and the model together; refuse what cannot run."""
    # imported here: the CLI reads this module's options at start, before it needs torch
    from model.checkpoint import TOKENIZER, CheckpointError, sha256_file, verify_digest
    from workers.data.manifest import ManifestError, verify_manifest

    try:
        manifest = verify_manifest(cfg.dataset)
    except ManifestError as e:
        raise TrainConfigError(f"dataset: {e}") from e
    packed = manifest["seq_len"]
    seq_len = cfg.seq_len or packed
    if seq_len != packed:
        raise TrainConfigError(f"seq_len={seq_len}: the dataset packs rows of {packed} tokens; train "
                               f"at that length or rebuild the dataset with packing.seq_len={seq_len}")
    if cfg.init_from:
        try:
            verify_digest(Path(cfg.init_from))
        except CheckpointError as e:
            raise TrainConfigError(f"init_from: {e}") from e
        model = ModelConfig.from_dict(json.loads((Path(cfg.init_from) / "config.json").read_text()))
        tokenizer_sha = sha256_file(Path(cfg.init_from) / TOKENIZER)
        if tokenizer_sha != manifest["tokenizer"]["sha256"]:
            raise TrainConfigError("dataset: tokenized with a different tokenizer than the init_from "
                                   "checkpoint's; build it with tokenizer.path set to the checkpoint's "
                                   "tokenizer.json")
        # the preset fixes the architecture; the context is what earlier stages set
        if cfg.preset and model != get_preset(cfg.preset).with_context_of(model):
            raise TrainConfigError(f"preset={cfg.preset} differs from the init_from checkpoint's model")
    else:
        try:
            model = get_preset(cfg.preset or manifest["preset"])
        except ConfigError as e:
            raise TrainConfigError(f"preset: {e}") from e
    pairs = manifest["spec"].get("kind") == "preference"
    if pairs != (cfg.stage == "preference"):
        raise TrainConfigError(
            f"dataset: {manifest['name']} holds preference pairs, which only the preference stage "
            "trains on" if pairs else f"dataset: the preference stage trains on preference pairs; "
            f"{manifest['name']} is a corpus (build a spec of kind preference)")
    if cfg.stage == "long_context":
        # extend the context the model was trained at (its max_seq_len) with RoPE scaling
        if seq_len <= model.max_seq_len:
            raise TrainConfigError(f"long_context: the dataset's rows of {seq_len} tokens are not longer "
                                   f"than the {model.max_seq_len} the model was trained at; build a "
                                   "long-context dataset (packing.seq_len)")
        model = model.extended_to(seq_len, cfg.rope_scaling)
    elif not cfg.init_from:
        # pretraining sets the model's context to the length it is trained at
        if seq_len > model.max_seq_len:
            raise TrainConfigError(f"the dataset packs rows of {seq_len} tokens, beyond the "
                                   f"{cfg.preset or manifest['preset']} preset's context of "
                                   f"{model.max_seq_len}")
        model = model.trained_at(seq_len)
    elif seq_len > model.max_seq_len:
        raise TrainConfigError(f"the dataset packs rows of {seq_len} tokens, beyond the model's context "
                               f"of {model.max_seq_len}: use the long_context stage")
    tokenizer_vocab = manifest["tokenizer"]["vocab_size"]
    if tokenizer_vocab > model.vocab_size:
        raise TrainConfigError(f"the dataset's tokenizer has {tokenizer_vocab} tokens; the model "
                               f"embeds {model.vocab_size}")
    return Plan(manifest=manifest, model=model.to_dict(), seq_len=seq_len, init_from=cfg.init_from)
