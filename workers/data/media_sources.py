"""Built-in real image, speech and video sources, and the spoken-needle and frame-needle examples.

Readers (location: builtin; every one takes option max_docs):
  sklearn-digits  image  scikit-learn's 8x8 handwritten digits, captioned with the digit
  sample-images   image  photos shipped in scikit-learn, matplotlib and scikit-image, captioned
  speech          audio  sentences of the Python docs spoken by espeak-ng (option voices)
  video-synth     video  pans across those photos, digits moving, sentences shown in parts

Every document is one media item between two texts, [f"{lead} ", f" {description}"]: the lead
names the modality ("Image:", "Audio:", "Video:"; "Listen:" / "Watch:" before a needle question)
and the description says what the media shows or says (caption, transcript, question and answer).
Everything is a function of the seed: document i is the same whatever max_docs or the call order.
"""

from __future__ import annotations

import _ctypes
import ctypes
import functools
import json
import re
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from model.encoders import MediaError, placeholder_count
from workers.data.media import audio_item, fit_image, image_item, video_item
from workers.data.retrieval import draw_facts, qa_text
from workers.data.readers import ReadContext, Reader, register
from workers.data.records import Document, MediaItem, Quarantined
from workers.data.sources import python_docs_corpus

if TYPE_CHECKING:
    from workers.data.spec import SourceSpec

DIGITS_LICENSE = "BSD-3-Clause"  # scikit-learn's copy of the UCI handwritten digits
DOCS_LICENSE = "PSF-2.0"  # sentences from the Python documentation
LEADS = {"image": "Image:", "audio": "Audio:", "video": "Video:"}
DEFAULT_VOICES = ("en-us", "en", "en-us+f3", "en-gb-scotland", "en+m3", "en-us-nyc+f2")  # en: GB
SPEAKING_RATES_WPM = (150, 175, 200)
SYNTHETIC_SOURCE = "synthetic"  # Document.source of the needle examples


# --- sentences -----------------------------------------------------------------------------

_PLAIN_SENTENCE = re.compile(r"[A-Z][A-Za-z ,;'-]*[a-z][.!?]")  # words only: no code, no numbers


def clean_sentences(texts: Sequence[str], min_chars: int = 30, max_chars: int = 140) -> list[str]:
    """The plain-word sentences of texts, in order: short prose fit to speak or draw."""
    found = []
    for text in texts:
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            if min_chars <= len(sentence) <= max_chars and _PLAIN_SENTENCE.fullmatch(sentence):
                found.append(sentence)
    return found


@functools.cache
def _docs_sentences() -> tuple[str, ...]:
    return tuple(clean_sentences(python_docs_corpus()))  # about 500


def _rng(seed: int, label: str, index: int) -> np.random.Generator:
    """The generator of item `index` of the stream `label`: independent of every other item."""
    return np.random.default_rng([seed, zlib.crc32(label.encode()), index])


def _nth_sentence(seed: int, label: str, index: int) -> str:
    """Sentence `index` of a seeded shuffle of the docs' sentences: none repeats before all do."""
    sentences = _docs_sentences()
    order = np.random.default_rng([seed, zlib.crc32(label.encode())]).permutation(len(sentences))
    return sentences[order[index % len(sentences)]]


# --- speech --------------------------------------------------------------------------------

class SpeechError(RuntimeError):
    """The speech engine is missing or failed."""


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.c_void_p)
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # samples come back through the callback before espeak_Synth returns
_ESPEAK_RATE = 1
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_NOISE_SEED = 0  # breathy variants add noise from the library's own generator
_ESPEAK_LOCK = threading.Lock()  # the library is one global state


def synthesize_speech(text: str, voice: str = "en-us",
                      rate_wpm: int = 175) -> tuple[np.ndarray, int]:
    """Speak text with espeak-ng (the espeakng-loader wheel) -> (float32 mono waveform in [-1, 1],
    sample rate).

    voice: an espeak-ng voice with an optional variant: en-us, en (British), en-gb-scotland,
    en-us-nyc, en-us+f3, en+m3, ... The library is loaded afresh for each call because it carries
    state from one utterance to the next (pitch flutter, echo): only then is the audio a function
    of the arguments alone.
    """
    if not text.strip():
        raise ValueError("nothing to speak: the text is empty")
    if not 80 <= rate_wpm <= 450:
        raise ValueError(f"rate_wpm={rate_wpm} is outside espeak-ng's 80..450 words per minute")
    try:
        import espeakng_loader
    except ImportError as e:
        raise SpeechError("speech synthesis needs espeak-ng: pip install espeakng-loader") from e
    data_dir = Path(espeakng_loader.get_data_path())
    variant = voice.partition("+")[2]
    if variant and not (data_dir / "voices" / "!v" / variant).is_file():
        # espeak-ng would silently speak without it
        raise ValueError(f"unknown espeak-ng voice variant {variant!r} in voice {voice!r}")
    chunks: list[np.ndarray] = []

    def collect(samples, count, events):
        if count > 0:
            chunks.append(np.frombuffer(ctypes.string_at(samples, 2 * count), dtype=np.int16))
        return 0  # 0: go on

    with _ESPEAK_LOCK:
        try:
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
        except OSError as e:
            raise SpeechError(f"cannot load libespeak-ng: {e}") from e
        try:
            sample_rate = _speak(lib, data_dir, text, voice, rate_wpm, _SYNTH_CALLBACK(collect))
        finally:
            _ctypes.dlclose(lib._handle)  # the next call starts from a fresh library state
    if not chunks:
        raise SpeechError(f"espeak-ng produced no audio for {text[:60]!r}")
    return np.concatenate(chunks).astype(np.float32) / 32768.0, sample_rate


def _speak(lib: ctypes.CDLL, data_dir: Path, text: str, voice: str, rate_wpm: int,
           callback) -> int:
    """One utterance through the espeak C API; the samples go to callback. -> sample rate."""
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_dir).encode(), 0)
    if sample_rate <= 0:
        raise SpeechError(f"espeak-ng failed to initialise with its data at {data_dir}")
    try:
        lib.espeak_SetSynthCallback(callback)
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"unknown espeak-ng voice {voice!r}; e.g. {', '.join(DEFAULT_VOICES)}")
        lib.espeak_SetParameter(_ESPEAK_RATE, rate_wpm, 0)
        lib.espeak_ng_SetRandSeed(_ESPEAK_NOISE_SEED)
        encoded = text.encode()
        status = lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0,
                                  _ESPEAK_CHARS_UTF8, None, None)
        if status != 0:
            raise SpeechError(f"espeak-ng failed (status {status}) to speak {text[:60]!r}")
    finally:
        lib.espeak_Terminate()
    return sample_rate


# --- text frames ---------------------------------------------------------------------------

@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: no files, no network


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def render_text_frame(text: str, size: int,
                      background: tuple[int, int, int] | np.ndarray = (255, 255, 255),
                      seed: int = 0) -> np.ndarray:
    """text drawn legibly on a size x size frame -> (size, size, 3) uint8.

    Wrapped at word boundaries in the largest font that fits. background: an RGB colour, or a
    picture (H, W[, 3]) fit to the frame, the text then sitting on a white panel over it.
    seed places the text block and picks the ink's shade.
    """
    if not text.strip():
        raise ValueError("nothing to draw: the text is empty")
    rng = np.random.default_rng(seed)
    margin = max(size // 16, 1)
    room = size - 2 * margin
    for font_size in range(max(size // 6, 6), 5, -1):  # largest font first
        font = _font(font_size)
        lines = _wrap(text, font, room)
        line_height = font_size + font_size // 4 + 1
        widest = max(font.getlength(line) for line in lines)
        if len(lines) * line_height <= room and widest <= room:
            break
    block_w, block_h = int(widest), len(lines) * line_height
    left = margin + int(rng.integers(max(room - block_w, 0) + 1))
    top = margin + int(rng.integers(max(room - block_h, 0) + 1))
    if isinstance(background, np.ndarray):
        canvas = Image.fromarray(fit_image(background, size).transpose(1, 2, 0))
        paper = (255, 255, 255)
        pad = max(font_size // 4, 1)
        panel = (left - pad, top - pad, left + block_w + pad, top + block_h + pad)
        ImageDraw.Draw(canvas).rectangle(panel, fill=paper)
    else:
        paper = tuple(int(c) for c in background)
        canvas = Image.new("RGB", (size, size), paper)
    shade = int(rng.integers(0, 60))
    ink = (shade,) * 3 if sum(paper) >= 3 * 128 else (255 - shade,) * 3  # dark on light, or light
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((left, top + i * line_height), line, font=font, fill=ink)
    return np.asarray(canvas, dtype=np.uint8)


# --- bundled pictures ----------------------------------------------------------------------

@dataclass(frozen=True)
class SampleImage:
    key: str  # <package>/<name>: where the file ships
    caption: str  # a noun phrase saying what it shows, written from looking at it
    license: str


SAMPLE_IMAGES = (
    SampleImage("sklearn/china.jpg", "a tall Chinese pagoda with red and green eaves among trees, "
                "beside a lake under a pale sky", "CC-BY-2.0 (danielbuechele on Flickr)"),
    SampleImage("sklearn/flower.jpg", "an orange dahlia in full bloom against dark green leaves",
                "CC-BY-2.0 (vultilion on Flickr)"),
    SampleImage("matplotlib/grace_hopper.jpg", "a portrait of Rear Admiral Grace Hopper in her US "
                "Navy uniform and cap, in front of an American flag", "public domain (US Navy)"),
    SampleImage("skimage/astronaut", "astronaut Eileen Collins in an orange flight suit holding "
                "her helmet, with an American flag and a model space shuttle behind her",
                "public domain (NASA)"),
    SampleImage("skimage/camera", "a black-and-white photo of a man looking through a camera on a "
                "tripod on a lawn, with buildings in the distance", "CC0-1.0 (Lav Varshney)"),
    SampleImage("skimage/coffee", "a cup of espresso on a red saucer with a spoon, on a wooden "
                "table", "CC0-1.0 (Rachel Michetti)"),
    SampleImage("skimage/chelsea", "a close-up of a tabby cat with green eyes looking at the "
                "camera", "CC0-1.0 (Stefan van der Walt)"),
    SampleImage("skimage/rocket", "a Falcon 9 rocket on its launch pad at dusk, lit by floodlights "
                "between tall lightning towers", "public domain (SpaceX)"),
    SampleImage("skimage/coins", "a black-and-white photo of two dozen ancient Greek coins from "
                "Pompeii laid out in rows", "no known copyright restrictions (Brooklyn Museum)"),
    SampleImage("skimage/text", "a grey photo of hand-written numbers and symbols on a sheet of "
                "paper, seen at an angle", "public domain"),
    SampleImage("skimage/hubble_deep_field", "the Hubble Extreme Deep Field: thousands of small, "
                "colourful galaxies scattered across black space", "public domain (NASA)"),
    SampleImage("skimage/retina", "a photo of the back of a human eye: an orange disc with red "
                "blood vessels branching from the bright optic disc", "CC0-1.0"),
    SampleImage("skimage/immunohistochemistry", "a microscope image of stained colon tissue: "
                "brown glands among small blue cells", "no known copyright restrictions (CMMI)"),
    SampleImage("skimage/clock", "a grey photo of a wall clock, blurred by a sideways camera "
                "movement", "public domain (Stefan van der Walt)"),
    SampleImage("skimage/brick", "a grey close-up of a wall of long, narrow bricks", "CC0-1.0"),
    SampleImage("skimage/grass", "a grey close-up of a patch of grass", "CC0-1.0"),
    SampleImage("skimage/gravel", "a grey close-up of small gravel stones", "CC0-1.0"),
    SampleImage("skimage/horse", "the black silhouette of a horse standing, on a white background",
                "CC0-1.0 (Andreas Preuss)"),
    SampleImage("skimage/cell", "a grey microscope image of a single round cell floating in saline",
                "CC0-1.0"),
)
SAMPLE_IMAGE_BY_KEY = {image.key: image for image in SAMPLE_IMAGES}
PAN_IMAGE_KEYS = ("sklearn/china.jpg", "sklearn/flower.jpg", "skimage/coffee", "skimage/chelsea",
                  "skimage/rocket", "skimage/coins", "skimage/text")  # wider than tall


@functools.cache
def load_sample_image(key: str) -> np.ndarray:
    """A bundled picture by its catalogue key -> (H, W) or (H, W, 3|4) uint8. Offline."""
    package, name = key.split("/", 1)
    if package == "sklearn":
        from sklearn.datasets import load_sample_image as load_sklearn_image
        pixels = load_sklearn_image(name)
    elif package == "matplotlib":
        from matplotlib import cbook
        with cbook.get_sample_data(name) as f:
            pixels = np.asarray(Image.open(f).convert("RGB"))
    elif package == "skimage":
        import skimage.data
        pixels = getattr(skimage.data, name)()
    else:
        raise ValueError(f"no bundled image {key!r}: the package is sklearn, matplotlib or skimage")
    pixels = pixels.astype(np.uint8) * 255 if pixels.dtype == bool else pixels
    pixels.flags.writeable = False  # cached: every caller shares it
    return pixels


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) float ink in [0, 1], (1797,) the digits."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    return digits.images / 16.0, digits.target


# --- videos --------------------------------------------------------------------------------

DIGIT_MOTIONS = ("left to right", "right to left", "top to bottom", "bottom to top")
_CANVAS, _GLYPH = 64, 24  # moving digits: a 24-pixel digit on a 64-pixel black canvas
Video = tuple[list[np.ndarray], str, str]  # frames, description, license


def _pan_video(index: int, rng: np.random.Generator, ctx: ReadContext) -> Video:
    """Square windows sliding across a wide photo."""
    image = SAMPLE_IMAGE_BY_KEY[PAN_IMAGE_KEYS[index // 3 % len(PAN_IMAGE_KEYS)]]
    pixels = load_sample_image(image.key)
    side = pixels.shape[0]
    offsets = np.linspace(0, pixels.shape[1] - side, ctx.video_frames).round().astype(int)
    motion = str(rng.choice(("left to right", "right to left")))
    if motion == "right to left":
        offsets = offsets[::-1]
    frames = [pixels[:, x:x + side] for x in offsets]
    return frames, f"The view pans from {motion} across {image.caption}.", image.license


def _digit_video(index: int, rng: np.random.Generator, ctx: ReadContext) -> Video:
    """A handwritten digit, enlarged, crossing a black canvas."""
    inks, digits = _digits()
    pick = int(rng.integers(len(digits)))
    glyph = np.asarray(Image.fromarray((inks[pick] * 255).astype(np.uint8)).resize(
        (_GLYPH, _GLYPH), Image.Resampling.BILINEAR))  # (24, 24)
    motion = str(rng.choice(DIGIT_MOTIONS))
    across = int(rng.integers(_CANVAS - _GLYPH + 1))
    along = np.linspace(0, _CANVAS - _GLYPH, ctx.video_frames).round().astype(int)
    if motion in ("right to left", "bottom to top"):
        along = along[::-1]
    frames = []
    for a in along:
        frame = np.zeros((_CANVAS, _CANVAS), np.uint8)
        y, x = (across, a) if motion.endswith(("left", "right")) else (a, across)
        frame[y:y + _GLYPH, x:x + _GLYPH] = glyph
        frames.append(frame)
    return frames, f"A handwritten {digits[pick]} moves from {motion}.", DIGITS_LICENSE


def _sentence_video(index: int, rng: np.random.Generator, ctx: ReadContext) -> Video:
    """A sentence of the docs split into runs of words, one run per frame."""
    sentence = _nth_sentence(ctx.seed, "video-synth", index)
    words = sentence.split()
    seed = int(rng.integers(2**31))
    frames = [render_text_frame(" ".join(run), ctx.image_size, seed=seed)
              for run in np.array_split(np.array(words), min(ctx.video_frames, len(words)))]
    return frames, f'The sentence "{sentence}" is shown a few words at a time.', DOCS_LICENSE


VIDEO_KINDS: dict[str, Callable[[int, np.random.Generator, ReadContext], Video]] = {
    "pan": _pan_video, "digit": _digit_video, "text": _sentence_video}


# --- documents -----------------------------------------------------------------------------

def _described(source: str, uri: str, item: MediaItem, description: str, license: str,
               meta: dict[str, str], lead: str | None = None) -> Document:
    return Document(source=source, uri=uri, modality=item.kind, media=[item], license=license,
                    texts=[f"{lead or LEADS[item.kind]} ", f" {description}"], meta=meta)


def check_media(doc: Document, ctx: ReadContext) -> None:
    """Raises MediaError unless the model (ctx.model) accepts each of doc's media items."""
    for item in doc.media:
        placeholder_count(item.kind, torch.from_numpy(item.array), ctx.model)


def _digit_document(spec: SourceSpec, key: str, uri: str, ctx: ReadContext) -> Document:
    inks, digits = _digits()
    digit = int(digits[int(key)])
    return _described(spec.name, uri, image_item(inks[int(key)], ctx),
                      f"A low-resolution scan of a handwritten {digit}.", DIGITS_LICENSE,
                      {"label": str(digit)})


def _sample_image_document(spec: SourceSpec, key: str, uri: str, ctx: ReadContext) -> Document:
    image = SAMPLE_IMAGE_BY_KEY[key]
    caption = f"{image.caption[0].upper()}{image.caption[1:]}."
    return _described(spec.name, uri, image_item(load_sample_image(key), ctx), caption,
                      image.license, {})


def _voices(spec: SourceSpec) -> tuple[str, ...]:
    voices = spec.options.get("voices", DEFAULT_VOICES)
    if isinstance(voices, str) or not voices or not all(isinstance(v, str) for v in voices):
        raise ValueError(f"source {spec.name!r}: option voices must be a non-empty list of "
                         f"espeak-ng voice names, got {voices!r}")
    return tuple(voices)


def _speech_document(spec: SourceSpec, key: str, uri: str, ctx: ReadContext) -> Document:
    index = int(key)
    voices = _voices(spec)
    voice = voices[index % len(voices)]
    rate_wpm = int(_rng(ctx.seed, "speech", index).choice(SPEAKING_RATES_WPM))
    sentence = _nth_sentence(ctx.seed, "speech", index)
    wave, sample_rate = synthesize_speech(sentence, voice, rate_wpm)
    return _described(spec.name, uri, audio_item(wave, sample_rate, ctx),
                      f"Transcript: {sentence}", DOCS_LICENSE,
                      {"voice": voice, "rate_wpm": str(rate_wpm)})


def _video_document(spec: SourceSpec, key: str, uri: str, ctx: ReadContext) -> Document:
    """Video i is of kind i % 3: a pan, a moving digit or a sentence in parts."""
    index = int(key)
    kind = list(VIDEO_KINDS)[index % len(VIDEO_KINDS)]
    frames, description, license = VIDEO_KINDS[kind](index, _rng(ctx.seed, "video-synth", index),
                                                     ctx)
    return _described(spec.name, uri, video_item(frames, ctx.video_fps, ctx), description,
                      license, {"motion": kind})


# --- readers -------------------------------------------------------------------------------

_KEYS_PER_ITEM = 32  # documents per work item


def _max_docs(spec: SourceSpec, accepted: tuple[str, ...], default: int) -> int:
    unknown = sorted(set(spec.options) - set(accepted))
    if unknown:
        raise ValueError(f"source {spec.name!r}: reader {spec.reader!r} takes options "
                         f"{', '.join(accepted)}; unknown: {', '.join(unknown)}")
    max_docs = spec.options.get("max_docs", default)
    if not isinstance(max_docs, int) or isinstance(max_docs, bool) or max_docs < 0:
        raise ValueError(f"source {spec.name!r}: max_docs must be an integer >= 0, "
                         f"got {max_docs!r}")
    return max_docs


def _register_builtin(name: str, modality: str, keys: Callable[[SourceSpec, int], list[str]],
                      make: Callable[[SourceSpec, str, str, ReadContext], Document], *,
                      default_max_docs: int, license: str, description: str,
                      options: tuple[str, ...] = ("max_docs",),
                      packages: tuple[str, ...] = ()) -> None:
    """A reader of the documents that keys(spec, max_docs) names; a work item is a comma-joined
    run of keys, and make(spec, key, uri, ctx) builds one document."""

    def list_items(spec: SourceSpec, ctx: ReadContext) -> list[str]:
        chosen = keys(spec, _max_docs(spec, options, default_max_docs))
        return [",".join(chosen[i:i + _KEYS_PER_ITEM])
                for i in range(0, len(chosen), _KEYS_PER_ITEM)]

    def read(spec: SourceSpec, item: str, ctx: ReadContext):
        for key in item.split(","):
            uri = f"builtin://{name}/{key}"
            try:
                doc = make(spec, key, uri, ctx)
            except (ImportError, OSError, RuntimeError, ValueError, KeyError) as e:
                yield Quarantined(spec.name, uri, f"cannot build {name} document {key!r}: {e}",
                                  "read")
                continue
            try:
                check_media(doc, ctx)
            except MediaError as e:
                yield Quarantined(spec.name, uri, f"the model rejects its {doc.modality}: {e}",
                                  "validate")
                continue
            yield doc

    register(Reader(name=name, modalities=(modality,), builtin=True, list_items=list_items,
                    read=read, license=license, description=description, packages=packages))


def _numbered(total: int | None) -> Callable[[SourceSpec, int], list[str]]:
    """Keys "0", "1", ... up to max_docs, and up to total where the data has an end."""
    return lambda spec, limit: [str(i) for i in range(min(limit, total or limit))]


def _speech_keys(spec: SourceSpec, limit: int) -> list[str]:
    for voice in _voices(spec):  # a wrong voice name fails the spec here, not every document
        synthesize_speech("Test.", voice)
    return _numbered(None)(spec, limit)


_DIGITS_COUNT = 1797
PICTURE_PACKAGES = ("scikit-learn", "matplotlib", "scikit-image")  # where the photos ship

_register_builtin(
    "sklearn-digits", "image", _numbered(_DIGITS_COUNT), _digit_document,
    default_max_docs=_DIGITS_COUNT, license=DIGITS_LICENSE, packages=("scikit-learn",),
    description="scikit-learn's 1797 8x8 handwritten digits (UCI), captioned with the digit. "
                "Options: max_docs (default all).")
_register_builtin(
    "sample-images", "image", lambda spec, limit: [i.key for i in SAMPLE_IMAGES[:limit]],
    _sample_image_document, default_max_docs=len(SAMPLE_IMAGES),
    license="per image: CC0-1.0, public domain or CC-BY-2.0", packages=PICTURE_PACKAGES,
    description="Photos bundled in scikit-learn, matplotlib and scikit-image, with hand-written "
                "captions and per-image licenses. Options: max_docs (default all).")
_register_builtin(
    "speech", "audio", _speech_keys, _speech_document, default_max_docs=64,
    license=DOCS_LICENSE, options=("max_docs", "voices"), packages=("espeakng-loader",),
    description="Sentences of the Python docs spoken by espeak-ng (espeakng-loader), with their "
                "transcript. Options: max_docs (default 64), voices (espeak-ng voice names, "
                f"default {list(DEFAULT_VOICES)}; document i uses voices[i % len(voices)]).")
_register_builtin(
    "video-synth", "video", _numbered(None), _video_document, default_max_docs=48,
    license="per video: its image's, BSD-3-Clause or PSF-2.0", packages=PICTURE_PACKAGES,
    description="Short videos from the bundled pictures: pans across photos, handwritten digits "
                "moving, sentences shown a few words at a time; each described. Options: "
                "max_docs (default 48).")


# --- needle examples -----------------------------------------------------------------------

_MAX_HAYSTACK_SENTENCES = 8
_HAYSTACK_TRIES = 24  # sentences synthesised per example, at most, looking for ones that fit
_SHORTEST_SENTENCE_SECONDS = 1.5  # 30 characters take longer: with less time left, nothing fits


def spoken_needle_examples(count: int, haystack_texts: list[str], ctx: ReadContext,
                           seed: int) -> list[Document]:
    """Speech of a few haystack sentences with a fact of the retrieval curriculum spoken among
    them, then the question in text and the answer: ["Listen: ", " Question: ... Answer: <value>"].

    The whole utterance fits ctx.audio_max_seconds. meta: task, needle_position (the needle's
    index among the spoken sentences), transcript (JSON list of those sentences), voice, key,
    value. license is left empty: it is that of haystack_texts, which the caller knows.
    """
    pool = clean_sentences(haystack_texts)
    if not pool:
        raise ValueError("haystack_texts hold no plain sentence of 30-140 characters to speak")
    examples = []
    for i in range(count):
        rng = _rng(seed, "spoken-needle", i)
        fact = draw_facts(rng, 1)[0]
        voice = str(rng.choice(DEFAULT_VOICES))
        needle = fact.statement
        needle_wave, sample_rate = synthesize_speech(needle, voice)
        seconds_left = ctx.audio_max_seconds - len(needle_wave) / sample_rate
        if seconds_left < 0:
            raise ValueError(f"the spoken needle alone lasts {len(needle_wave) / sample_rate:.1f} "
                             f"s, longer than audio_max_seconds={ctx.audio_max_seconds}")
        spoken: list[tuple[str, np.ndarray]] = []
        for k in rng.permutation(len(pool))[:_HAYSTACK_TRIES]:
            wave, _ = synthesize_speech(pool[k], voice)
            if len(wave) / sample_rate <= seconds_left:
                spoken.append((pool[k], wave))
                seconds_left -= len(wave) / sample_rate
            if len(spoken) == _MAX_HAYSTACK_SENTENCES or seconds_left < _SHORTEST_SENTENCE_SECONDS:
                break
        position = int(rng.integers(len(spoken) + 1))
        spoken.insert(position, (needle, needle_wave))
        item = audio_item(np.concatenate([wave for _, wave in spoken]), sample_rate, ctx)
        doc = _described(SYNTHETIC_SOURCE, f"synthetic://spoken-needle/{seed}/{i}", item,
                         qa_text(fact.question, fact.value), "",
                         {"task": "spoken_needle", "needle_position": str(position),
                          "transcript": json.dumps([sentence for sentence, _ in spoken]),
                          "voice": voice, "key": fact.key, "value": fact.value}, lead="Listen:")
        check_media(doc, ctx)
        examples.append(doc)
    return examples


def frame_needle_examples(count: int, ctx: ReadContext, seed: int) -> list[Document]:
    """A video of ctx.video_frames frames (bundled photos and sentences of the Python docs) of
    which one shows a fact of the retrieval curriculum, then the question and answer in text:
    ["Watch: ", " Question: ... Answer: <value>"].

    meta: task, needle_position (the needle frame's index), key, value. license: those of the
    photos and sentences shown.
    """
    sentences = _docs_sentences()
    examples = []
    for i in range(count):
        rng = _rng(seed, "frame-needle", i)
        fact = draw_facts(rng, 1)[0]
        position = int(rng.integers(ctx.video_frames))
        frames, licenses = [], set()
        for f in range(ctx.video_frames):
            photo = SAMPLE_IMAGES[int(rng.integers(len(SAMPLE_IMAGES)))]
            on_photo, frame_seed = bool(rng.integers(2)), int(rng.integers(2**31))
            if on_photo:
                licenses.add(photo.license)
            if f == position:
                background = load_sample_image(photo.key) if on_photo else (255, 255, 255)
                frames.append(render_text_frame(fact.statement, ctx.image_size,
                                                background, frame_seed))
            elif on_photo:
                frames.append(load_sample_image(photo.key))
            else:
                licenses.add(DOCS_LICENSE)
                sentence = sentences[int(rng.integers(len(sentences)))]
                frames.append(render_text_frame(sentence, ctx.image_size, seed=frame_seed))
        doc = _described(SYNTHETIC_SOURCE, f"synthetic://frame-needle/{seed}/{i}",
                         video_item(frames, ctx.video_fps, ctx), qa_text(fact.question, fact.value),
                         "; ".join(sorted(licenses)),
                         {"task": "frame_needle", "needle_position": str(position),
                          "key": fact.key, "value": fact.value}, lead="Watch:")
        check_media(doc, ctx)
        examples.append(doc)
    return examples
