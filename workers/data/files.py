"""Readers of user files: text, JSON lines, images, audio and video from a folder, one file, a
glob or s3:// (every byte through infra.storage).

Each file is size-checked before it is read, its content sniffed against its extension, and
decoded defensively: whatever is broken becomes a `Quarantined` record that says what was wrong,
and everything else still comes through. Files a reader cannot handle are listed and quarantined
too, never skipped in silence. Media files take their text (caption, transcript, description)
from a sidecar `<stem>.txt` beside them; sidecars are not items of their own.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import posixpath
import re
import struct
import warnings
import wave
import zipfile
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageSequence

from infra.storage import StorageError, exists, is_s3, list_files, read_bytes, size_of
from workers.data.media import audio_item, image_item, video_item
from workers.data.preference import PairError, pair_document, parse_pair
from workers.data.readers import ReadContext, Reader, ReadResult, register
from workers.data.records import Document, MediaItem, Quarantined
from workers.data.spec import SourceSpec

TEXT_EXTENSIONS = (".txt", ".md", ".rst", ".py")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp")
AUDIO_EXTENSIONS = (".wav",)  # no FLAC or Ogg decoder is installed: those are quarantined
VIDEO_EXTENSIONS = (".gif", ".webp", ".npy", ".npz")

MIN_IMAGE_SIDE = 8
MAX_DECODED_PIXELS = Image.MAX_IMAGE_PIXELS  # PIL's decompression-bomb limit, all frames together
SILENCE_RMS = 1e-4  # about -80 dBFS
MIN_SAMPLE_RATE = 1000
MAX_BINARY_FRACTION = 0.01  # text with more control characters than this is binary
BINARY_CHARS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")  # control characters text never holds
DEFAULT_FRAME_MS = 100  # what browsers show a GIF frame without a duration for

# sample width in bytes -> (dtype, zero level, full scale) of PCM WAV samples
PCM_FORMATS = {1: ("u1", 128.0, 128.0), 2: ("<i2", 0.0, 32768.0), 4: ("<i4", 0.0, 2.0**31)}

# what decoders raise on malformed bytes (StorageError, an OSError, included; RuntimeError:
# the wave module's on a malformed chunk, json's RecursionError on absurd nesting)
DECODE_ERRORS = (OSError, ValueError, TypeError, SyntaxError, EOFError, IndexError, KeyError,
                 RuntimeError, struct.error, zlib.error, wave.Error, zipfile.BadZipFile)

# content formats by their leading bytes
SIGNATURES: dict[str, Callable[[bytes], bool]] = {
    "PNG": lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"),
    "JPEG": lambda b: b.startswith(b"\xff\xd8\xff"),
    "GIF": lambda b: b[:6] in (b"GIF87a", b"GIF89a"),
    "WEBP": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP",
    "BMP": lambda b: b[:2] == b"BM" and b[6:10] == b"\0\0\0\0",  # reserved zeros: never text
    "WAV": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WAVE",
    "NPY": lambda b: b.startswith(b"\x93NUMPY"),
    "NPZ": lambda b: b.startswith(b"PK\x03\x04"),
}
EXTENSION_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".gif": "GIF", ".webp": "WEBP",
                     ".bmp": "BMP", ".wav": "WAV", ".npy": "NPY", ".npz": "NPZ"}

Decoder = Callable[[SourceSpec, str, bytes, ReadContext], list[Document | Quarantined]]


class Rejected(Exception):
    """Bad input: why a file (or line) is quarantined, and the stage that found out."""

    def __init__(self, reason: str, stage: str = "validate"):
        super().__init__(reason)
        self.reason, self.stage = reason, stage


# ---- shared steps -------------------------------------------------------------------------


def _extension(uri: str) -> str:
    return posixpath.splitext(uri)[1].lower()


def _stem(uri: str) -> str:
    return posixpath.splitext(uri)[0]


def _name_of(uri: str) -> str:
    """A file name as words: the caption of last resort."""
    return re.sub(r"[_\-.]+", " ", posixpath.basename(_stem(uri))).strip()


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _explain(error: Exception, uri: str) -> tuple[str, str]:
    """(reason, stage) for anything reading or decoding raised."""
    if isinstance(error, Rejected):
        return error.reason, error.stage
    if isinstance(error, StorageError):
        return str(error), "read"
    fmt = EXTENSION_FORMATS.get(_extension(uri), _extension(uri).lstrip(".").upper())
    return f"cannot decode {fmt}: {_describe(error)}", "decode"


def _quarantine(spec: SourceSpec, uri: str, reason: str, stage: str, size: int,
                data: bytes | None) -> Quarantined:
    return Quarantined(source=spec.name, uri=uri, reason=reason, stage=stage,
                       size_bytes=size if data is None else len(data),
                       sha256="" if data is None else hashlib.sha256(data).hexdigest())


def _check_extension(uri: str, extensions: tuple[str, ...], reader: str) -> None:
    ext = _extension(uri)
    if ext not in extensions:
        raise Rejected(f"unsupported extension {ext or '(none)'} for reader {reader} "
                       f"(reads {' '.join(extensions)})", "read")


def _fetch(uri: str, size: int, ctx: ReadContext) -> bytes:
    """The bytes of a file whose size (from size_of) is within the limits."""
    if size == 0:
        raise Rejected("empty file (0 bytes)", "read")
    if size > ctx.max_file_bytes:
        raise Rejected(f"too large: {size:,} bytes > limit {ctx.max_file_bytes:,}", "read")
    return read_bytes(uri)


def _check_content(uri: str, data: bytes, expected: str | None) -> None:
    """The content's format (None: text) is what the extension says."""
    found = next((fmt for fmt, matches in SIGNATURES.items() if matches(data)), None)
    if found != expected:
        raise Rejected(f"content does not match extension {_extension(uri)}: expected "
                       f"{expected or 'text'}, found {found or 'unrecognised data'}")


def _decode_utf8(data: bytes, what: str = "") -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Rejected(f"{what}invalid UTF-8 at byte {e.start}: {e.reason}", "decode") from None


def _sidecar_text(uri: str, spec: SourceSpec, ctx: ReadContext, fallback: str) -> str:
    """The text in `<stem>.txt` beside a media file, else option `caption`, else fallback."""
    sidecar = _stem(uri) + ".txt"
    try:
        present = exists(sidecar)
    except OSError as e:
        raise StorageError(f"{sidecar}: unreachable ({e})") from e
    if present:
        return _decode_utf8(read_bytes(sidecar, ctx.max_file_bytes),
                            f"sidecar {posixpath.basename(sidecar)}: ").strip()
    return spec.options.get("caption") or fallback


def _file_reader(name: str, extensions: tuple[str, ...], decode: Decoder):
    """read(): checks and fetches one file, decodes it, quarantines whatever fails on the way."""

    def read(spec: SourceSpec, uri: str, ctx: ReadContext) -> ReadResult:
        size, data = -1, None
        try:
            _check_extension(uri, extensions, name)
            size = size_of(uri)
            data = _fetch(uri, size, ctx)
            results = decode(spec, uri, data, ctx)
        except (Rejected, *DECODE_ERRORS) as e:
            results = [_quarantine(spec, uri, *_explain(e, uri), size, data)]
        yield from results

    return read


def _file_lister(media_extensions: tuple[str, ...]):
    """list_items(): every file of the location, less the sidecars of media files."""

    def list_items(spec: SourceSpec, ctx: ReadContext) -> list[str]:
        files = list_files(spec.location)
        media_stems = {_stem(f) for f in files if _extension(f) in media_extensions}
        return [f for f in files if not (_extension(f) == ".txt" and _stem(f) in media_stems)]

    return list_items


# ---- text ---------------------------------------------------------------------------------


def _decode_text(spec: SourceSpec, uri: str, data: bytes, ctx: ReadContext) -> list[Document]:
    _check_content(uri, data, None)
    text = _decode_utf8(data)
    binary = len(BINARY_CHARS.findall(text))
    if binary > MAX_BINARY_FRACTION * len(text):
        raise Rejected(f"binary content, not text: {binary:,} control characters in "
                       f"{len(text):,} ({binary / len(text):.0%})")
    return [Document(source=spec.name, uri=uri, modality="text", texts=[text],
                     license=spec.license)]


def _json_field(record: dict, name: str, kind: type):
    if name not in record:
        raise Rejected(f"no {name!r} field (fields: {', '.join(sorted(record)) or 'none'})")
    value = record[name]
    if not isinstance(value, kind) or (kind is list and not all(isinstance(v, str) for v in value)):
        what = "a list of strings" if kind is list else kind.__name__
        raise Rejected(f"{name!r} is {type(value).__name__}, not {what}")
    return value


def _linked(uri: str, path: str) -> str:
    """A path in a JSON line, relative to the file's folder unless absolute or s3://."""
    if is_s3(path) or path.startswith("/"):
        return path
    scheme = "s3://" if is_s3(uri) else ""
    folder = posixpath.dirname(uri.removeprefix(scheme))
    return scheme + posixpath.normpath(posixpath.join(folder, path))


def _linked_image(uri: str, path: str, ctx: ReadContext) -> MediaItem:
    link = _linked(uri, path)
    try:
        _check_extension(link, IMAGE_EXTENSIONS, "jsonl")
        return image_item(_image_pixels(link, _fetch(link, size_of(link), ctx)), ctx)
    except (Rejected, *DECODE_ERRORS) as e:
        reason, stage = _explain(e, link)
        raise Rejected(f"image {path}: {reason}", stage) from None


def _json_line(spec: SourceSpec, uri: str, line: bytes, ctx: ReadContext) -> Document:
    try:
        record = json.loads(_decode_utf8(line))
    except json.JSONDecodeError as e:
        raise Rejected(f"invalid JSON ({e.msg} at column {e.colno})", "decode") from None
    if spec.reader == "preference-jsonl":
        try:
            return pair_document(parse_pair(record), spec.name, uri, spec.license)
        except PairError as e:
            raise Rejected(str(e)) from None
    if not isinstance(record, dict):
        raise Rejected(f"a JSON {type(record).__name__}, not an object")
    if spec.modality == "interleaved":
        texts, images = _json_field(record, "texts", list), _json_field(record, "images", list)
        if len(texts) != len(images) + 1:
            raise Rejected(f"{len(texts)} texts for {len(images)} images (need one more text)")
        media = [_linked_image(uri, path, ctx) for path in images]
    else:
        texts, media = [_json_field(record, spec.options.get("text_field", "text"), str)], []
    return Document(source=spec.name, uri=uri, modality=spec.modality, texts=texts, media=media,
                    license=spec.license)


def _decode_jsonl(spec: SourceSpec, uri: str, data: bytes,
                  ctx: ReadContext) -> list[Document | Quarantined]:
    """One document per non-blank line; a bad line is quarantined alone as `<uri>#L<n>`."""
    results = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        line_uri = f"{uri}#L{number}"
        try:
            results.append(_json_line(spec, line_uri, line, ctx))
        except (Rejected, *DECODE_ERRORS) as e:
            reason, stage = _explain(e, uri)
            results.append(_quarantine(spec, line_uri, f"line {number}: {reason}", stage,
                                       len(line), line))
    return results


# ---- images -------------------------------------------------------------------------------


def _check_pixels(pixels: int, what: str) -> None:
    if pixels > MAX_DECODED_PIXELS:
        raise Rejected(f"decompression bomb: {what} decode to {pixels:,} pixels, over the "
                       f"limit of {MAX_DECODED_PIXELS:,}")


def _check_side(width: int, height: int) -> None:
    if min(width, height) < MIN_IMAGE_SIDE:
        raise Rejected(f"image too small: {width}x{height} (sides under {MIN_IMAGE_SIDE} px)")


def _open_image(uri: str, data: bytes) -> Image.Image:
    """The image, its content type and structure verified, before any pixel is decoded."""
    _check_content(uri, data, EXTENSION_FORMATS[_extension(uri)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            Image.open(io.BytesIO(data)).verify()
            image = Image.open(io.BytesIO(data))  # verify() leaves it unusable: open again
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise Rejected(f"decompression bomb: {e}") from None
    width, height = image.size
    _check_pixels(width * height, f"{width}x{height}")
    return image


def _image_pixels(uri: str, data: bytes) -> np.ndarray:
    image = _open_image(uri, data)
    _check_side(*image.size)
    image.load()
    return np.asarray(image.convert("RGB"))  # (H, W, 3)


def _decode_image(spec: SourceSpec, uri: str, data: bytes, ctx: ReadContext) -> list[Document]:
    item = image_item(_image_pixels(uri, data), ctx)
    caption = _sidecar_text(uri, spec, ctx, _name_of(uri))
    return [Document(source=spec.name, uri=uri, modality="image", texts=["", caption], media=[item],
                     license=spec.license)]


# ---- audio --------------------------------------------------------------------------------


def _wav_samples(data: bytes) -> tuple[np.ndarray, int]:
    """(S,) float32 mono samples in [-1, 1] (channels averaged; from integers, so never NaN)
    and the sample rate."""
    try:
        with wave.open(io.BytesIO(data)) as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError, RuntimeError) as e:
        raise Rejected(f"unreadable WAV header: {_describe(e)}", "decode") from None
    if width not in PCM_FORMATS:
        raise Rejected(f"unsupported sample width: {8 * width}-bit PCM (reads 8, 16 and 32-bit)",
                       "decode")
    dtype, zero, scale = PCM_FORMATS[width]
    frames = len(raw) // (width * channels)  # a truncated data chunk holds fewer than declared
    pcm = np.frombuffer(raw[: frames * width * channels], dtype).reshape(frames, channels)  # (S, C)
    return ((pcm.astype(np.float32) - zero) / scale).mean(axis=1), rate


def _check_audio(samples: np.ndarray, rate: int, ctx: ReadContext) -> None:
    if samples.size == 0:
        raise Rejected("no audio frames")
    if rate < MIN_SAMPLE_RATE:
        raise Rejected(f"sample rate {rate} Hz is below {MIN_SAMPLE_RATE} Hz")
    seconds = samples.size / rate
    if seconds > ctx.audio_max_seconds:
        # truncating would leave a transcript that no longer matches the audio
        raise Rejected(f"too long: {seconds:.1f} s > audio_max_seconds {ctx.audio_max_seconds:g} s")
    cfg = ctx.model
    min_samples = max(cfg.audio_n_fft, cfg.audio_hop * cfg.audio_frames_per_token)
    min_seconds = min_samples / cfg.audio_sample_rate
    if seconds < min_seconds:
        raise Rejected(f"too short: {seconds:.3f} s < {min_seconds:.3f} s (one audio token)")
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    if rms < SILENCE_RMS:
        raise Rejected(f"silent audio: RMS {rms:.1e} < {SILENCE_RMS:g}")


def _decode_audio(spec: SourceSpec, uri: str, data: bytes, ctx: ReadContext) -> list[Document]:
    _check_content(uri, data, "WAV")
    samples, rate = _wav_samples(data)
    _check_audio(samples, rate, ctx)
    transcript = _sidecar_text(uri, spec, ctx, "")
    return [Document(source=spec.name, uri=uri, modality="audio", texts=["", transcript],
                     media=[audio_item(samples, rate, ctx)], license=spec.license)]


# ---- video --------------------------------------------------------------------------------


def _animation_frames(uri: str, data: bytes) -> tuple[list[np.ndarray], float]:
    """Every frame of an animated GIF or WebP, (H, W, 3) each, and the mean frame rate."""
    image = _open_image(uri, data)
    (width, height), count = image.size, getattr(image, "n_frames", 1)
    _check_pixels(count * width * height, f"{count} frames of {width}x{height}")
    frames, durations_ms = [], []
    for frame in ImageSequence.Iterator(image):
        frames.append(np.asarray(frame.convert("RGB")))
        durations_ms.append(frame.info.get("duration") or DEFAULT_FRAME_MS)
    return frames, 1000.0 * len(frames) / sum(durations_ms)


def _array_frames(data: bytes, spec: SourceSpec) -> tuple[list[np.ndarray], float]:
    """Frames of an .npy (F, H, W, 3) array, or of every array but `fps` in an .npz, in order:
    (F, H, W, 3) stacks or (H, W, 3) single frames. Never unpickles: user files are untrusted."""
    loaded = np.load(io.BytesIO(data), allow_pickle=False)
    fps = spec.options.get("fps")
    if isinstance(loaded, np.ndarray):
        arrays = [loaded]
    else:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            expanded = sum(member.file_size for member in archive.infolist())
        _check_pixels(expanded // 3, f"arrays of {expanded:,} bytes")
        with loaded:
            fps = float(loaded["fps"]) if "fps" in loaded.files else fps
            arrays = [loaded[name] for name in loaded.files if name != "fps"]
    for array in arrays:
        if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[-1] != 3:
            raise Rejected(f"video arrays must be (F, H, W, 3) or (H, W, 3) uint8, got "
                           f"{array.shape} {array.dtype}")
    if fps is None:
        raise Rejected("no frame rate: store `fps` in the .npz or give the reader option fps")
    frames = [frame for array in arrays for frame in (array if array.ndim == 4 else [array])]
    return frames, float(fps)


def _check_frames(frames: list[np.ndarray], fps: float) -> None:
    if not frames:
        raise Rejected("no frames")
    if len(frames) == 1:
        raise Rejected("one frame: a still image, not a video (read it with image-files)")
    sizes = list(dict.fromkeys(f"{f.shape[1]}x{f.shape[0]}" for f in frames))
    if len(sizes) > 1:
        raise Rejected(f"video frames of mixed sizes: {' and '.join(sizes)}")
    _check_side(frames[0].shape[1], frames[0].shape[0])
    if not (math.isfinite(fps) and fps > 0):
        raise Rejected(f"frame rate must be a positive number, got {fps}")


def _decode_video(spec: SourceSpec, uri: str, data: bytes, ctx: ReadContext) -> list[Document]:
    if _extension(uri) in (".gif", ".webp"):
        frames, fps = _animation_frames(uri, data)
    else:
        _check_content(uri, data, EXTENSION_FORMATS[_extension(uri)])
        frames, fps = _array_frames(data, spec)
    _check_frames(frames, fps)
    description = _sidecar_text(uri, spec, ctx, _name_of(uri))
    return [Document(source=spec.name, uri=uri, modality="video", texts=["", description],
                     media=[video_item(frames, fps, ctx)], license=spec.license)]


# ---- registration -------------------------------------------------------------------------

_COMMON = ("location: a folder, a file, a glob or s3://...; files of other extensions, empty, "
           "unreadable or above max_file_bytes are quarantined")
_SIDECAR = "text from a sidecar <stem>.txt, else option caption"


def _register(name: str, modalities: tuple[str, ...], extensions: tuple[str, ...],
              decode: Decoder, description: str, *, sidecars: bool) -> Reader:
    return register(Reader(name=name, modalities=modalities, builtin=False,
                           list_items=_file_lister(extensions if sidecars else ()),
                           read=_file_reader(name, extensions, decode),
                           description=f"{description}. Reads {' '.join(extensions)}; {_COMMON}"))


_register("text-files", ("text",), TEXT_EXTENSIONS, _decode_text,
          "One text document per UTF-8 file", sidecars=False)
_register("jsonl", ("text", "interleaved"), (".jsonl",), _decode_jsonl,
          "One document per line; bad lines are quarantined alone as <uri>#L<n>. Modality "
          "text: option text_field (default 'text'). Modality interleaved: fields 'texts' "
          "(N+1 strings) and 'images' (N paths, relative to the file's folder)", sidecars=False)
_register("preference-jsonl", ("text",), (".jsonl",), _decode_jsonl,
          "One preference pair per line: prompt, chosen, rejected (strings), optional source, "
          "system and format (chat: prompt is the user's message; text: the text to continue); "
          "a bad line is quarantined alone as <uri>#L<n>. Only in a spec of kind preference",
          sidecars=False)
_register("image-files", ("image",), IMAGE_EXTENSIONS, _decode_image,
          f"Images decoded with PIL; caption {_SIDECAR}, else the file name", sidecars=True)
_register("audio-files", ("audio",), AUDIO_EXTENSIONS, _decode_audio,
          f"PCM WAV audio (8, 16, 32-bit; channels averaged); transcript {_SIDECAR}; silent, "
          "too short or longer than audio_max_seconds is quarantined", sidecars=True)
_register("video-files", ("video",), VIDEO_EXTENSIONS, _decode_video,
          "Animated GIF/WebP, or uint8 frames (F, H, W, 3) in .npy/.npz (frame rate: the npz's "
          f"'fps' array, else option fps); description {_SIDECAR}, else the file name",
          sidecars=True)
