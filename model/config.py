"""Model configuration: one plain dataclass, named presets, validation that names the field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ROPE_SCALINGS = ("none", "linear", "ntk", "yarn")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


# what the training stages set (trained_at, extended_to), where a preset fixes the rest
CONTEXT_FIELDS = ("max_seq_len", "rope_original_max_seq_len", "rope_scaling", "rope_factor")


@dataclass
class ModelConfig:
    # text backbone
    vocab_size: int = 4096
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 2  # grouped-query attention: n_heads // n_kv_heads queries share a K/V head
    max_seq_len: int = 2048  # context the model is configured for (after RoPE scaling)
    norm_eps: float = 1e-5
    tie_embeddings: bool = False

    # rotary position embedding and its long-context scaling
    rope_theta: float = 10000.0
    rope_scaling: str = "none"  # none | linear | ntk | yarn
    rope_factor: float = 1.0  # context extension factor
    rope_original_max_seq_len: int = 2048  # context the model was pretrained at (yarn)

    # sparse mixture-of-experts feed-forward
    n_experts: int = 8
    top_k: int = 2
    expert_hidden: int = 512
    n_shared_experts: int = 0  # 0 or 1: a dense SwiGLU every token also passes through
    n_dense_layers: int = 0  # the first layers use a dense SwiGLU instead of MoE
    dense_hidden: int = 1024
    aux_loss_weight: float = 0.01  # Switch load-balancing loss, alpha
    z_loss_weight: float = 0.001  # router z-loss

    # modality encoders
    image_patch_size: int = 8
    image_max_patches_per_side: int = 32
    audio_sample_rate: int = 16000
    audio_n_fft: int = 400  # 25 ms windows at 16 kHz
    audio_hop: int = 160  # 10 ms hop
    audio_n_mels: int = 64
    audio_frames_per_token: int = 4  # 40 ms of audio per token
    video_pool: int = 2  # each frame's patch grid is average-pooled by this factor per side

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        positive = [
            "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "max_seq_len",
            "n_experts", "top_k", "expert_hidden", "dense_hidden", "image_patch_size",
            "image_max_patches_per_side", "audio_sample_rate", "audio_n_fft", "audio_hop",
            "audio_n_mels", "audio_frames_per_token", "video_pool", "rope_original_max_seq_len",
        ]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"n_heads={self.n_heads} must divide d_model={self.d_model}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim (d_model / n_heads = {self.head_dim}) must be even for RoPE")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        if self.top_k > self.n_experts:
            raise ConfigError(f"top_k={self.top_k} must not exceed n_experts={self.n_experts}")
        if self.n_shared_experts not in (0, 1):
            raise ConfigError(f"n_shared_experts must be 0 or 1, got {self.n_shared_experts}")
        if not 0 <= self.n_dense_layers <= self.n_layers:
            raise ConfigError(
                f"n_dense_layers={self.n_dense_layers} must be between 0 and n_layers={self.n_layers}")
        if self.rope_scaling not in ROPE_SCALINGS:
            raise ConfigError(f"rope_scaling must be one of {ROPE_SCALINGS}, got {self.rope_scaling!r}")
        if self.rope_factor < 1.0:
            raise ConfigError(f"rope_factor must be >= 1, got {self.rope_factor}")
        if self.rope_theta <= 0:
            raise ConfigError(f"rope_theta must be positive, got {self.rope_theta}")
        if self.aux_loss_weight < 0 or self.z_loss_weight < 0:
            raise ConfigError("aux_loss_weight and z_loss_weight must be >= 0")
        if self.audio_hop > self.audio_n_fft:
            raise ConfigError(f"audio_hop={self.audio_hop} must not exceed audio_n_fft={self.audio_n_fft}")

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def trained_at(self, seq_len: int) -> "ModelConfig":
        """The context pretraining sets: the length it trains at, no RoPE scaling."""
        return self.replace(max_seq_len=seq_len, rope_original_max_seq_len=seq_len,
                            rope_scaling="none", rope_factor=1.0)

    def extended_to(self, seq_len: int, scaling: str) -> "ModelConfig":
        """The context a long-context stage sets: RoPE scaled from the length trained at."""
        return self.replace(max_seq_len=seq_len, rope_original_max_seq_len=self.max_seq_len,
                            rope_scaling=scaling, rope_factor=seq_len / self.max_seq_len)

    def with_context_of(self, other: "ModelConfig") -> "ModelConfig":
        """This architecture at the context `other` was trained or extended to."""
        return self.replace(**{f: getattr(other, f) for f in CONTEXT_FIELDS})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**data)

    def param_counts(self) -> dict[str, int]:
        """Total and per-token active parameter counts (embeddings and encoders included)."""
        d, h = self.d_model, self.head_dim
        attn = d * h * (2 * self.n_heads + 2 * self.n_kv_heads)
        expert = 3 * d * self.expert_hidden
        shared = expert if self.n_shared_experts else 0
        dense = 3 * d * self.dense_hidden
        n_moe = self.n_layers - self.n_dense_layers
        norms = 2 * d * self.n_layers + d
        embed = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        p2 = 3 * self.image_patch_size ** 2
        encoders = ((p2 + 1) * d + 2 * self.image_max_patches_per_side * d  # image
                    + (self.audio_n_mels * self.audio_frames_per_token + 1) * d  # audio
                    + (d + 1) * d)  # video adapter
        body = attn * self.n_layers + dense * self.n_dense_layers + norms + embed + encoders
        total = body + n_moe * (self.n_experts * expert + shared + d * self.n_experts)
        active = body + n_moe * (self.top_k * expert + shared + d * self.n_experts)
        return {"total": total, "active": active}


PRESETS: dict[str, ModelConfig] = {}


def _preset(name: str, **kw) -> None:
    PRESETS[name] = ModelConfig(**kw)


# tiny: unit tests, seconds on CPU
_preset("tiny", vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=512,
        n_experts=4, top_k=2, expert_hidden=96, dense_hidden=128, image_patch_size=4,
        audio_n_mels=32, rope_original_max_seq_len=512)
# small: a CPU training run in minutes
_preset("small", vocab_size=4096, d_model=256, n_layers=4, n_heads=8, n_kv_heads=2,
        max_seq_len=4096, n_experts=8, top_k=2, expert_hidden=512, dense_hidden=1024,
        rope_original_max_seq_len=4096)
# compact: small's depth at half its width, four experts, tied embeddings: the retrieval probe's
# model (docs/training.md), fast enough on 2 CPUs to train past the step where retrieval forms
_preset("compact", vocab_size=4096, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
        max_seq_len=4096, n_experts=4, top_k=2, expert_hidden=256, dense_hidden=512,
        tie_embeddings=True, rope_original_max_seq_len=4096)
# base: one GPU; ~156M active of ~750M total parameters
_preset("base", vocab_size=32768, d_model=768, n_layers=12, n_heads=12, n_kv_heads=4,
        max_seq_len=8192, n_experts=16, top_k=2, expert_hidden=1536, n_shared_experts=0,
        dense_hidden=3072, image_patch_size=14, rope_theta=500000.0,
        rope_original_max_seq_len=8192)
# large: on paper (a multi-GPU run); ~2.2B active of ~27B total
_preset("large", vocab_size=65536, d_model=2048, n_layers=24, n_heads=16, n_kv_heads=8,
        max_seq_len=32768, n_experts=32, top_k=2, expert_hidden=5632, dense_hidden=8192,
        image_patch_size=14, rope_theta=1000000.0, rope_original_max_seq_len=32768)


def get_preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)
