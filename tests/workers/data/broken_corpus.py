"""A folder tree of user files for the file readers' tests: a few good files of every modality
and many kinds of broken ones, each with the fragment its quarantine reason must contain.

One folder per reader run (SOURCES); media sidecar captions (`<stem>.txt`) are not items and so
not in the expectations.
"""

from __future__ import annotations

import io
import json
import struct
import textwrap
import wave
import zlib
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.signal import chirp
from sklearn.datasets import load_digits

from workers.data.readers import ReadContext
from workers.data.sources import python_docs_corpus

# (reader, modality, folder, options): how the tests read each folder
SOURCES = [
    ("text-files", "text", "text", {}),
    ("jsonl", "text", "jsonl", {}),
    ("jsonl", "interleaved", "interleaved", {}),
    ("image-files", "image", "images", {}),
    ("audio-files", "audio", "audio", {}),
    ("video-files", "video", "video", {"fps": 12}),
]
GOOD = ""  # the expectation of a file (or line) that must become a document
MAX_FILE_BYTES = 200_000
AUDIO_MAX_SECONDS = 3.0
TRIPWIRE = "unpickled.marker"  # created if a reader ever unpickles the pickled .npz


def corpus_context(cache_dir: Path) -> ReadContext:
    """The read limits the corpus's too-large and too-long files are made against."""
    return ReadContext(cache_dir=cache_dir, max_file_bytes=MAX_FILE_BYTES,
                       audio_max_seconds=AUDIO_MAX_SECONDS)


class _Tripwire:
    """Unpickling it creates a marker file: proof that a reader unpickled user data."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


@cache
def _digits() -> np.ndarray:
    return load_digits().images  # (1797, 8, 8) in [0, 16]


def _digit(i: int, size: int = 32) -> Image.Image:
    """A handwritten digit from scikit-learn's bundled set, scaled up."""
    pixels = (_digits()[i] * 255 / 16).astype(np.uint8)  # (8, 8)
    return Image.fromarray(pixels).resize((size, size), Image.Resampling.NEAREST)


def _png_bomb() -> bytes:
    """A valid PNG header declaring 100000 x 100000 pixels, in a few hundred bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))


def _wav(samples: np.ndarray, rate: int, width: int) -> bytes:
    """PCM WAV of float samples in [-1, 1], (S,) or (S, C), at 8, 16, 24 or 32 bits."""
    samples = samples if samples.ndim == 2 else samples[:, None]  # (S, C)
    scale = 2.0 ** (8 * width - 1) - 1
    ints = np.round(samples * scale).astype(np.int64) + (128 if width == 1 else 0)
    if width == 3:  # no numpy dtype: the low three bytes of little-endian int32
        raw = ints.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        raw = ints.astype({1: "u1", 2: "<i2", 4: "<i4"}[width]).tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return out.getvalue()


def _speech_like(rate: int, seconds: float) -> np.ndarray:
    """A 120 Hz voice with vowel formants, in syllables of 4 Hz."""
    t = np.arange(int(rate * seconds)) / rate
    harmonics = np.arange(1, 30)
    pitches = harmonics * 120
    formants = np.exp(-((pitches - 700) / 300) ** 2) + 0.5 * np.exp(-((pitches - 1200) / 400) ** 2)
    voice = (formants[:, None] * np.sin(2 * np.pi * pitches[:, None] * t)).sum(axis=0)
    return 0.3 * voice / np.abs(voice).max() * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))


def _moving_square(frames: int, size: int = 32) -> np.ndarray:
    """(F, size, size, 3) uint8: a red square moving right over a blue background."""
    video = np.zeros((frames, size, size, 3), np.uint8)
    video[..., 2] = 120
    for i in range(frames):
        video[i, 10:18, 2 * i:2 * i + 8] = (255, 40, 40)
    return video


def _animation(video: np.ndarray, fmt: str) -> bytes:
    first, *rest = [Image.fromarray(frame) for frame in video]
    return _encode(first, fmt, save_all=True, append_images=rest, duration=80, loop=0)


def _npz(**arrays) -> bytes:
    out = io.BytesIO()
    np.savez_compressed(out, **arrays)
    return out.getvalue()


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def _text_files() -> dict[str, tuple[bytes, str]]:
    docs = python_docs_corpus()
    return {
        "text/topic_0.txt": (docs[0].encode(), GOOD),
        "text/topic_1.md": (docs[1].encode(), GOOD),
        "text/guide.rst": ("\ufeff".encode() + docs[2].replace("\n", "\r\n").encode(), GOOD),
        "text/module.py": (Path(textwrap.__file__).read_bytes(), GOOD),
        "text/latin1.txt": ("Un café très animé, déjà vu.".encode("latin-1"),
                            "invalid UTF-8 at byte 6"),
        "text/garbage.txt": (np.random.default_rng(0).integers(0, 128, 4000, np.uint8).tobytes(),
                             "binary content, not text"),
        "text/empty.md": (b"", "empty file (0 bytes)"),
        "text/huge.txt": ((docs[3] + "\n").encode() * (MAX_FILE_BYTES // len(docs[3]) + 1),
                          f"bytes > limit {MAX_FILE_BYTES:,}"),
        "text/picture.txt": (_encode(_digit(0), "PNG"), "expected text, found PNG"),
        "text/report.docx": (b"PK\x03\x04 not really a document", "unsupported extension .docx"),
    }


def _jsonl_lines(lines: list[tuple[bytes, str | None]], path: str) -> dict[str, tuple[bytes, str]]:
    """A .jsonl file of the given lines, and the expectation of each line as `path#L<n>`."""
    files = {path: (b"\n".join(line for line, _ in lines) + b"\n", None)}
    for n, (_, want) in enumerate(lines, start=1):
        if want is not None:
            files[f"{path}#L{n}"] = (None, want)
    return files


def _page(texts: list[str], images: list[str]) -> bytes:
    """A JSON line of an interleaved document."""
    return json.dumps({"texts": texts, "images": images}).encode()


def _jsonl_files() -> dict[str, tuple[bytes | None, str | None]]:
    docs = python_docs_corpus()
    good = [(json.dumps({"text": d, "id": i}).encode(), GOOD) for i, d in enumerate(docs[4:7])]
    mixed = [
        good[0],
        (b'{"text": "unterminated', "line 2: invalid JSON"),
        (json.dumps({"body": "no text field"}).encode(), "line 3: no 'text' field"),
        (json.dumps({"text": 42}).encode(), "line 4: 'text' is int, not str"),
        (b"[1, 2, 3]", "line 5: a JSON list, not an object"),
        (b'{"text": "caf\xe9"}', "line 6: invalid UTF-8 at byte 13"),
        (b"   ", None),  # blank: skipped, not an item
        good[1],
    ]
    interleaved = [
        (_page(["Two digits: ", " and ", "."], ["../images/digit_0.png", "../images/digit_1.jpg"]),
         GOOD),
        (_page(["A lost picture ", "."], ["missing.png"]), "line 2: image missing.png: "),
        (_page(["one", "two", "three"], ["../images/digit_0.png"]), "line 3: 3 texts for 1 images"),
        (_page(["broken ", "."], ["../images/truncated.png"]),
         "line 4: image ../images/truncated.png: cannot decode PNG"),
    ]
    return (_jsonl_lines(good, "jsonl/good.jsonl") | _jsonl_lines(mixed, "jsonl/mixed.jsonl")
            | _jsonl_lines(interleaved, "interleaved/pages.jsonl"))


def _image_files() -> dict[str, tuple[bytes, str | None]]:
    png = _encode(_digit(7), "PNG")
    jpeg = _encode(_digit(8).convert("RGB"), "JPEG", quality=90)
    return {
        "images/digit_0.png": (_encode(_digit(0), "PNG"), GOOD),
        "images/digit_0.txt": (b"a handwritten zero", None),  # sidecar caption
        "images/digit_1.jpg": (_encode(_digit(1).convert("RGB"), "JPEG"), GOOD),
        "images/digit_2.bmp": (_encode(_digit(2), "BMP"), GOOD),
        "images/digit_3.webp": (_encode(_digit(3), "WEBP", lossless=True), GOOD),
        "images/digit_4.gif": (_encode(_digit(4), "GIF"), GOOD),
        "images/scan_of_5.jpeg": (_encode(_digit(5).convert("RGB"), "JPEG"), GOOD),
        "images/truncated.png": (png[: len(png) // 2], "cannot decode PNG"),
        "images/truncated.jpg": (jpeg[: len(jpeg) // 2], "cannot decode JPEG"),
        "images/words.png": (b"Just some words, not a picture at all.\n",
                             "extension .png: expected PNG, found unrecognised data"),
        "images/bomb.png": (_png_bomb(), "decompression bomb"),
        "images/tiny.png": (_encode(_digit(6, size=4), "PNG"), "image too small: 4x4"),
        "images/notes.txt": (b"a caption with no image",
                             "unsupported extension .txt for reader image-files"),
        "images/scan.tiff": (_encode(_digit(9), "TIFF"), "unsupported extension .tiff"),
    }


def _audio_files() -> dict[str, tuple[bytes, str | None]]:
    t = np.arange(16_000) / 16_000
    sweep = 0.5 * chirp(t, f0=200, f1=3000, t1=1.0, method="logarithmic")
    t8k = np.arange(6400) / 8000
    stereo = 0.4 * np.stack([np.sin(2 * np.pi * 440 * t8k), np.sin(2 * np.pi * 660 * t8k)], axis=1)
    good = _wav(sweep, 16_000, 2)
    return {
        "audio/sweep.wav": (good, GOOD),
        "audio/sweep.txt": (b"a rising whistle", None),  # sidecar transcript
        "audio/tones_stereo.wav": (_wav(stereo, 8000, 1), GOOD),
        "audio/vowels.wav": (_wav(_speech_like(22_050, 1.5), 22_050, 4), GOOD),
        "audio/picture.wav": (_encode(_digit(0), "PNG"), "expected WAV, found PNG"),
        "audio/corrupt_header.wav": (good[:12] + b"\xff" * 24 + good[36:], "unreadable WAV header"),
        "audio/no_frames.wav": (_wav(np.zeros(0), 16_000, 2), "no audio frames"),
        "audio/silent.wav": (_wav(np.zeros(8000), 8000, 2), "silent audio"),
        "audio/too_long.wav": (_wav(_speech_like(8000, 4.0), 8000, 1),
                               f"too long: 4.0 s > audio_max_seconds {AUDIO_MAX_SECONDS:g}"),
        "audio/click.wav": (_wav(sweep[:160], 16_000, 2), "too short"),
        "audio/pcm24.wav": (_wav(sweep, 16_000, 3), "unsupported sample width: 24-bit"),
        "audio/speech.flac": (b"fLaC\0\0\0\x22" + bytes(34), "unsupported extension .flac"),
    }


def _video_files(root: Path) -> dict[str, tuple[bytes, str | None]]:
    square = _moving_square(12)
    pickled = np.array([_Tripwire(root / TRIPWIRE), "frame"], dtype=object)
    return {
        "video/square.gif": (_animation(square, "GIF"), GOOD),
        "video/square.txt": (b"a red square slides to the right", None),  # sidecar description
        "video/square.webp": (_animation(square, "WEBP"), GOOD),
        "video/frames.npy": (_npy(square[:6]), GOOD),
        "video/clip.npz": (_npz(frames=square, fps=np.float32(4.0)), GOOD),
        "video/mixed_sizes.npz": (_npz(a=square[0], b=np.zeros((48, 32, 3), np.uint8)),
                                  "video frames of mixed sizes: 32x32 and 32x48"),
        "video/pickled.npz": (_npz(frames=pickled), "allow_pickle=False"),
        "video/still.gif": (_encode(Image.fromarray(square[0]), "GIF"),
                            "a still image, not a video"),
        "video/no_frames.npy": (_npy(np.zeros((0, 16, 16, 3), np.uint8)), "no frames"),
        "video/float.npy": (_npy(square.astype(np.float32)), "(F, H, W, 3) or (H, W, 3) uint8"),
        "video/clip.mp4": (b"\0\0\0\x18ftypmp42",
                           "unsupported extension .mp4 for reader video-files"),
    }


def write_broken_corpus(root: Path) -> dict[str, str]:
    """Writes the tree under root; returns {path relative to root (a JSON line: `path#L<n>`):
    the fragment its quarantine reason must contain, or GOOD for a document}."""
    files = (_text_files() | _jsonl_files() | _image_files() | _audio_files() | _video_files(root))
    expected = {}
    for rel, (data, want) in files.items():
        if data is not None:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        if want is not None:
            expected[rel] = want
    return expected
