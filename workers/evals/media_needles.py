"""Audio and video needles: a spoken needle (espeak-ng) among spoken held-out sentences, and one
frame showing the needle among frames of held-out sentences and bundled photos with text
timestamps; the question in text after the medium, as the spoken/frame-needle training examples
ask it. Lengths are seconds of speech and numbers of frames; depths are linearly spaced."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from workers.data.media import fit_image
from workers.data.media_sources import (SAMPLE_IMAGES, clean_sentences, load_sample_image,
                                        render_text_frame, synthesize_speech)
from workers.data.needles import draw_needle, needle_sentence
from workers.evals.adapters import Audio, ModelAdapter, Video
from workers.evals.config import SuiteConfig
from workers.evals.haystack import question_prompt
from workers.evals.heldout import HeldOut
from workers.evals.needle_grid import NeedleSample, score_grid
from workers.evals.results import EvalResult

VOICE = "en-us"


@functools.lru_cache(maxsize=512)
def _spoken(sentence: str) -> tuple[np.ndarray, int]:
    return synthesize_speech(sentence, VOICE)


def _sentences(data: HeldOut) -> list[str]:
    sentences = clean_sentences(data.texts)
    if not sentences:
        raise ValueError(f"{data.name}: no plain held-out sentence of 30-140 characters to speak "
                         "or show")
    return sentences


def spoken_haystack(sentences: list[str], needle: str, seconds: float, depth: float,
                    rng: np.random.Generator) -> Audio:
    """Held-out sentences spoken until `seconds`, the needle spoken between two of them."""
    needle_wave, rate = _spoken(needle)
    spoken, total = [], len(needle_wave) / rate
    for k in rng.permutation(len(sentences)):
        if total >= seconds:
            break
        wave, _ = _spoken(sentences[k])
        spoken.append(wave)
        total += len(wave) / rate
    position = int(round(depth * len(spoken)))
    spoken.insert(position, needle_wave)
    return Audio(np.concatenate(spoken), rate)


def needle_video(sentences: list[str], needle: str, frames: int, depth: float, size: int,
                 fps: float, rng: np.random.Generator) -> Video:
    """`frames` frames, alternately held-out sentences and bundled photos at random, the needle
    sentence drawn on the frame nearest `depth`."""
    position = int(round(depth * (frames - 1)))
    out = []
    for f in range(frames):
        seed = int(rng.integers(2 ** 31))
        if f == position:
            out.append(render_text_frame(needle, size, (255, 255, 255), seed))
        elif rng.integers(2):
            photo = SAMPLE_IMAGES[int(rng.integers(len(SAMPLE_IMAGES)))]
            out.append(fit_image(load_sample_image(photo.key), size).transpose(1, 2, 0))
        else:
            out.append(render_text_frame(sentences[int(rng.integers(len(sentences)))], size,
                                         seed=seed))
    return Video(out, [f / fps for f in range(frames)])


def media_needle_grid(name: str, seed: int, lengths: list, depths: int, lead: str,
                      haystack: Callable[[str, float, float, np.random.Generator], object],
                      adapter: ModelAdapter, data: HeldOut, cfg: SuiteConfig, source: str,
                      axis: str) -> EvalResult:
    """A lengths x depths grid of needles hidden in a medium (haystack(needle, length, depth,
    rng)), each followed by the question in text, scored like the text grid."""
    result = EvalResult(eval=name)
    rng = np.random.default_rng([cfg.seed, seed])
    samples = []
    for length in lengths:
        for depth in np.linspace(0.0, 1.0, depths):
            city, number = draw_needle(rng)
            medium = haystack(needle_sentence(city, number), length, float(depth), rng)
            samples.append(NeedleSample(length, float(depth), city, number,
                                        [lead, medium, question_prompt(city, " ")]))
    score_grid(result, adapter, samples, source, cfg.answer_tokens, cfg.niah_distractors, rng, axis)
    return result


def niah_audio(adapter: ModelAdapter, data: HeldOut, cfg: SuiteConfig) -> EvalResult:
    sentences = _sentences(data)
    return media_needle_grid(
        "niah_audio", 3, cfg.audio_seconds, cfg.audio_depths, "Listen: ",
        lambda needle, seconds, depth, rng: spoken_haystack(sentences, needle, seconds, depth, rng),
        adapter, data, cfg, f"speech of {data.name}", "speech (seconds)")


def niah_video(adapter: ModelAdapter, data: HeldOut, cfg: SuiteConfig) -> EvalResult:
    sentences = _sentences(data)
    return media_needle_grid(
        "niah_video", 4, cfg.video_frames, cfg.video_depths, "Watch: ",
        lambda needle, frames, depth, rng: needle_video(sentences, needle, frames, depth,
                                                        cfg.frame_size, cfg.video_fps, rng),
        adapter, data, cfg, f"frames of {data.name} and bundled photos", "video (frames)")
