"""The corpus spec (contract 1, docs/contracts.md): which sources, how to clean, split, pack and what synthetic
tasks to mix in. YAML on disk, validated with pydantic before any work starts."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from model.config import ConfigError, get_preset

SPEC_DIR = Path(__file__).parent / "specs"


class SpecError(ValueError):
    """The corpus spec is invalid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    modality: Literal["text", "image", "audio", "video", "interleaved"]
    location: str = "builtin"  # "builtin", a local path or glob, or s3://bucket/prefix[/glob]
    reader: str
    weight: float = Field(1.0, ge=0.0, le=100.0)  # 2.0 repeats each document twice; 0.5 keeps half
    split: Literal["auto", "train", "validation", "test"] = "auto"
    license: str = ""  # for files; builtin readers know their own
    options: dict[str, Any] = Field(default_factory=dict)  # reader-specific, e.g. max_docs

    @model_validator(mode="after")
    def _reader_fits(self) -> "SourceSpec":
        from workers.data.readers import all_readers

        readers = all_readers()
        if self.reader not in readers:
            raise ValueError(f"reader {self.reader!r} is unknown; known: {', '.join(sorted(readers))}")
        reader = readers[self.reader]
        if self.modality not in reader.modalities:
            raise ValueError(f"reader {self.reader!r} produces {'/'.join(reader.modalities)}, "
                             f"not modality {self.modality!r}")
        if reader.builtin != (self.location == "builtin"):
            raise ValueError(f"location {self.location!r} does not suit reader {self.reader!r}: "
                             + ("use location: builtin" if reader.builtin else "give a path, glob or s3:// URI"))
        return self


class TokenizerSpec(_Strict):
    vocab_size: int | None = Field(None, ge=256)  # None: the preset's vocabulary size
    path: str | None = None  # a given tokenizer.json: used as is, its digest checked
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    sample_bytes: int = Field(2_000_000, ge=10_000)  # text sampled to train a new tokenizer

    @model_validator(mode="after")
    def _digest_needs_path(self) -> "TokenizerSpec":
        if self.sha256 and not self.path:
            raise ValueError("sha256 is given but path is not")
        return self


class FilterSpec(_Strict):
    min_chars: int = Field(16, ge=0)
    max_chars: int = Field(2_000_000, ge=1)
    max_file_bytes: int = Field(50_000_000, ge=1)
    max_toxicity: float = Field(1.0, ge=0.0, le=1.0)  # drop text documents scoring above
    dedup: bool = True
    scrub_pii: bool = True

    @model_validator(mode="after")
    def _range(self) -> "FilterSpec":
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars={self.min_chars} exceeds max_chars={self.max_chars}")
        return self


class SplitSpec(_Strict):
    validation_percent: int = Field(5, ge=0, le=50)
    test_percent: int = Field(5, ge=0, le=50)


class PackingSpec(_Strict):
    seq_len: int = Field(512, ge=16, le=1_048_576)
    rows_per_shard: int = Field(2048, ge=1)
    # text characters per packing task (whole staging files; at least one file per task)
    chars_per_task: int = Field(1_000_000, ge=1)
    # rows filled at once by best-fit packing (workers/data/pack.py): more, less padding
    open_rows: int = Field(64, ge=1, le=4096)


class MediaSpec(_Strict):
    image_size: int = Field(64, ge=8, le=1024)
    video_frames: int = Field(8, ge=1, le=256)
    video_fps: float = Field(2.0, gt=0, le=60)
    audio_max_seconds: float = Field(20.0, gt=0, le=3600)


class SyntheticSpec(_Strict):
    """Counts of synthetic examples mixed into the corpus (seeded; built from the training split)."""

    retrieval: int = Field(0, ge=0)  # single needle, multi-key, multi-value, multi-needle
    drills: int = Field(0, ge=0)  # recall drills: "Key: value." facts, recalled in another order
    copies: int = Field(0, ge=0)  # a stretch of frequent words repeated: forms the copy circuit
    # the longest retrieval document, in the corpus's tokens (each takes 0.4 to all of it)
    haystack_tokens: int = Field(384, ge=32)
    spoken_needles: int = Field(0, ge=0)
    frame_needles: int = Field(0, ge=0)
    chat: int = Field(0, ge=0)  # instruction examples, refusals of harmful requests among them
    # preference pairs (kind: preference): refusal, lookalike and retrieval pairs in turn
    preference: int = Field(0, ge=0)
    refusal_fraction: float = Field(0.3, ge=0, le=1)
    canaries: int = Field(0, ge=0)  # PII canary records planted for the leakage evaluation
    canary_repeats: int = Field(1, ge=1, le=100)
    # evaluation prompt files (AdvBench, HarmBench, StrongREJECT, JailbreakBench, XSTest CSVs)
    # whose prompts the chat examples must never repeat
    exclude_prompts_from: list[str] = Field(default_factory=list)


PREFERENCE_READERS = ("preference-jsonl",)


class CorpusSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    # corpus: documents packed into rows (pretrain, long_context, sft); preference: one row per
    # preference pair (the preference stage), the text sources only lending haystacks
    kind: Literal["corpus", "preference"] = "corpus"
    preset: str = "small"  # the model preset the data is built for (vocabulary, patch, audio)
    seed: int = 0
    sources: list[SourceSpec] = Field(min_length=1)
    tokenizer: TokenizerSpec = TokenizerSpec()
    filters: FilterSpec = FilterSpec()
    splits: SplitSpec = SplitSpec()
    packing: PackingSpec = PackingSpec()
    media: MediaSpec = MediaSpec()
    synthetic: SyntheticSpec = SyntheticSpec()

    def digest(self) -> str:
        """sha256 of the validated spec: what a manifest records, and what a rebuild is keyed on."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        try:
            get_preset(v)
        except ConfigError as e:
            raise ValueError(str(e)) from e
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "CorpusSpec":
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        model = get_preset(self.preset)
        if self.media.image_size % model.image_patch_size:
            raise ValueError(f"media.image_size={self.media.image_size} is not a multiple of the "
                             f"{self.preset} preset's patch size {model.image_patch_size}")
        if self.media.image_size // model.image_patch_size > model.image_max_patches_per_side:
            raise ValueError(f"media.image_size={self.media.image_size} exceeds the preset's "
                             f"{model.image_max_patches_per_side} patches per side")
        grid = self.media.image_size // model.image_patch_size
        if grid % model.video_pool:
            raise ValueError(f"media.image_size={self.media.image_size}: its {grid}x{grid} patch grid "
                             f"is not divisible by video_pool={model.video_pool}")
        pair_sources = [s.name for s in self.sources if s.reader in PREFERENCE_READERS]
        if self.kind == "corpus" and (pair_sources or self.synthetic.preference):
            raise ValueError("preference pairs (synthetic.preference, a preference-jsonl source) "
                             "make a dataset of kind preference: set kind: preference")
        if self.kind == "preference" and not (pair_sources or self.synthetic.preference):
            raise ValueError("kind preference: give pairs (synthetic.preference, or a source "
                             "read by preference-jsonl)")
        haystacks = self.synthetic.retrieval or self.synthetic.preference
        if haystacks and self.synthetic.haystack_tokens > self.packing.seq_len:
            raise ValueError(f"synthetic.haystack_tokens={self.synthetic.haystack_tokens} exceeds "
                             f"packing.seq_len={self.packing.seq_len}: a retrieval document longer "
                             "than a row is split, its question cut from its facts (a retrieval "
                             "pair would not fit its row)")
        return self

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size or get_preset(self.preset).vocab_size


def _format(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        lines.append(f"{where}: {err['msg']}")
    return "; ".join(lines)


def parse_spec(data: dict, origin: str = "spec") -> CorpusSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: a corpus spec is a YAML mapping, got {type(data).__name__}")
    try:
        return CorpusSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{origin}: {_format(e)}") from None


def builtin_specs() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))


def load_spec(name_or_path: str | Path) -> CorpusSpec:
    """A built-in spec by name (`tiny`, `demo`) or a YAML file."""
    path = Path(name_or_path)
    if not path.suffix and (SPEC_DIR / f"{name_or_path}.yaml").is_file():
        path = SPEC_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise SpecError(f"no corpus spec {str(name_or_path)!r}: not a file, and not one of the "
                        f"built-in specs ({', '.join(builtin_specs())})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML ({e})") from None
    return parse_spec(data, str(path))
