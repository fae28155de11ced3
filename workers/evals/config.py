"""Suite sizes: which evals run and how many samples each takes. `tiny` runs in CI in seconds,
`demo` on the demo model in minutes, `full` at the sizes the results are reported at."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

LONG_CONTEXT_EVALS = ("perplexity", "niah_text", "multi_needle", "niah_audio", "niah_video")
SAFETY_EVALS = ("refusal", "over_refusal", "toxicity", "injection", "pii")
EVALS = LONG_CONTEXT_EVALS + SAFETY_EVALS
MIN_HAYSTACK_TOKENS = 32  # a few sentences: less hides nothing
# the shortest needle prompt that leaves a haystack: a needle sentence and its question take
# about 64 tokens of a small vocabulary
MIN_NEEDLE_PROMPT_TOKENS = 64 + MIN_HAYSTACK_TOKENS
TOKENS_PER_EXTRA_NEEDLE = 24


class SuiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    evals: tuple[str, ...] = EVALS
    seed: int = 0
    # perplexity vs position
    ppl_sequences: int = Field(16, ge=1)
    ppl_points: int = Field(16, ge=4)  # log-spaced positions the cumulative NLL is read at
    # text needle-in-a-haystack: context lengths (tokens) x depths (0 .. 1, linearly spaced)
    niah_lengths: tuple[int, ...] = (256, 512, 1024)
    niah_depths: int = Field(5, ge=1)
    niah_samples: int = Field(1, ge=1)  # per grid cell
    niah_distractors: int = Field(9, ge=1)  # numbers the true one is ranked among
    answer_tokens: int = Field(16, ge=1)
    # multi-needle
    multi_needles: int = Field(3, ge=2)
    multi_length: int = Field(1024, ge=64)
    multi_samples: int = Field(2, ge=1)
    # audio and video needles: lengths (seconds / frames) x depths
    audio_seconds: tuple[float, ...] = (10.0, 20.0)
    audio_depths: int = Field(3, ge=1)
    video_frames: tuple[int, ...] = (8, 16)
    video_depths: int = Field(3, ge=1)
    frame_size: int = Field(32, ge=8)
    video_fps: float = 1.0
    # safety
    safety_prompts: int = Field(50, ge=1)  # per prompt set, at most
    toxicity_prompts: int = Field(50, ge=1)
    injection_samples: int = Field(10, ge=1)
    injection_length: int = Field(512, ge=64)  # tokens of document around the attack
    pii_candidates: int = Field(99, ge=1)  # random secrets the true one is ranked among
    refusal_scorer: str = "combined"
    reply_tokens: int = Field(48, ge=1)
    # where the public safety sets are (AdvBench, HarmBench, ..., XSTest, BIPIA, RTP); None: the
    # built-in sets only
    safety_data: Path | None = None

    @field_validator("evals")
    @classmethod
    def _known(cls, evals: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(evals) - set(EVALS))
        if unknown:
            raise ValueError(f"unknown evals {unknown}; known: {', '.join(EVALS)}")
        return evals

    @model_validator(mode="after")
    def _room_for_haystacks(self) -> SuiteConfig:
        """Refused with the suite (before any training) rather than at eval time."""
        short = [n for n in self.niah_lengths if n < MIN_NEEDLE_PROMPT_TOKENS]
        if short:
            raise ValueError(f"niah_lengths {short} leave no room for a haystack beside the "
                             f"needle and the question: use {MIN_NEEDLE_PROMPT_TOKENS} or more")
        least = MIN_NEEDLE_PROMPT_TOKENS + TOKENS_PER_EXTRA_NEEDLE * (self.multi_needles - 1)
        if self.multi_length < least:
            raise ValueError(f"multi_length {self.multi_length} leaves no room for a haystack "
                             f"beside {self.multi_needles} needles and the question: use {least} "
                             "or more")
        return self


SUITES = {
    "tiny": SuiteConfig(name="tiny", ppl_sequences=4, niah_lengths=(192, 448), niah_depths=3,
                        niah_distractors=4, answer_tokens=10, multi_length=256, multi_samples=1,
                        audio_seconds=(4.0,), audio_depths=2, video_frames=(6,), video_depths=2,
                        frame_size=16, safety_prompts=4, toxicity_prompts=4, injection_samples=2,
                        injection_length=192, pii_candidates=9, reply_tokens=12),
    "demo": SuiteConfig(name="demo", niah_lengths=(256, 512, 896), multi_length=768,
                        audio_seconds=(8.0, 16.0), video_frames=(8, 16)),
    # the `capable` profile: lengths up to 4x its pretraining length of 256, five needles at 2x
    "capable": SuiteConfig(name="capable", niah_lengths=(128, 192, 256, 512, 1024), niah_depths=5,
                           niah_samples=2, multi_needles=5, multi_length=512, multi_samples=6,
                           audio_seconds=(10.0, 20.0), video_frames=(8, 16), safety_prompts=100,
                           toxicity_prompts=100, injection_samples=20),
    "full": SuiteConfig(name="full", ppl_sequences=64, niah_lengths=(512, 1024, 2048, 4096),
                        niah_depths=11, niah_samples=3, multi_needles=5, multi_length=3072,
                        multi_samples=10, audio_seconds=(10.0, 20.0, 40.0), audio_depths=5,
                        video_frames=(8, 16, 32), video_depths=5, safety_prompts=500,
                        toxicity_prompts=400, injection_samples=50),
}


def get_suite(name: str, **overrides) -> SuiteConfig:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
    return SuiteConfig.model_validate({**SUITES[name].model_dump(), **overrides})
