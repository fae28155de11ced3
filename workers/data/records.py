"""The records that flow through the data pipeline, and their Arrow-friendly row form.

A source yields `Document`s (good input) and `Quarantined` records (bad input, with the reason);
the pipeline turns documents into token ids and packs them. One media item per placeholder run:
`texts` has one more entry than `media`, and a document reads
texts[0] media[0] texts[1] media[1] ... texts[-1].
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass, field

import numpy as np

MODALITIES = ("text", "image", "audio", "video", "interleaved")
SPLITS = ("train", "validation", "test")

# Compact storage of media, in the model's input form (model/encoders.py):
#   image (3, H, W) uint8; video (F, 3, H, W) uint8; audio (F, n_mels) float16 log-mel frames.
MEDIA_DTYPES = {"image": np.uint8, "video": np.uint8, "audio": np.float16}


@dataclass
class MediaItem:
    kind: str  # image | audio | video
    array: np.ndarray
    fps: float = 0.0  # video: frames per second, for the text timestamps

    def __post_init__(self) -> None:
        if self.kind not in MEDIA_DTYPES:
            raise ValueError(f"unknown media kind {self.kind!r}")
        self.array = np.ascontiguousarray(self.array, dtype=MEDIA_DTYPES[self.kind])


@dataclass
class Document:
    source: str  # the corpus spec's source name
    uri: str  # where it came from: a path, s3:// URI, or builtin://<reader>/<key>
    modality: str  # text | image | audio | video | interleaved
    texts: list[str]
    media: list[MediaItem] = field(default_factory=list)
    license: str = ""
    split: str | None = None  # None: assigned by content hash; else fixed by the source
    meta: dict[str, str] = field(default_factory=dict)  # e.g. toxicity, pii counts, task type

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"unknown modality {self.modality!r}")
        if len(self.texts) != len(self.media) + 1:
            raise ValueError(f"{self.uri}: {len(self.texts)} text segments for "
                             f"{len(self.media)} media items (need one more text than media)")
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}")

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def content_hash(self) -> str:
        """sha256 of the normalised text and the media bytes: equal content, equal hash."""
        h = hashlib.sha256(normalize_text(self.text).encode())
        for m in self.media:
            h.update(m.kind.encode())
            h.update(str(m.array.shape).encode())
            h.update(m.array.tobytes())
        return h.hexdigest()

    def to_row(self) -> dict:
        return {
            "source": self.source, "uri": self.uri, "modality": self.modality,
            "license": self.license, "split": self.split or "",
            "texts": list(self.texts),
            "media_kinds": [m.kind for m in self.media],
            "media_shapes": [list(m.array.shape) for m in self.media],
            "media_bytes": [m.array.tobytes() for m in self.media],
            "media_fps": [float(m.fps) for m in self.media],
            "meta": dict(self.meta),
        }

    @classmethod
    def from_row(cls, row: dict) -> "Document":
        media = [MediaItem(kind, np.frombuffer(data, dtype=MEDIA_DTYPES[kind]).reshape(shape), fps)
                 for kind, shape, data, fps in zip(row["media_kinds"], row["media_shapes"],
                                                   row["media_bytes"], row["media_fps"])]
        return cls(source=row["source"], uri=row["uri"], modality=row["modality"],
                   texts=list(row["texts"]), media=media, license=row["license"],
                   split=row["split"] or None, meta=dict(row.get("meta") or {}))


@dataclass
class Quarantined:
    """An input that could not become a document, and why. Nothing else is lost because of it."""

    source: str
    uri: str
    reason: str  # short and specific: "truncated PNG: image file is truncated", ...
    stage: str  # read | decode | validate | clean
    size_bytes: int = -1
    sha256: str = ""

    def to_row(self) -> dict:
        return {"source": self.source, "uri": self.uri, "reason": self.reason, "stage": self.stage,
                "size_bytes": self.size_bytes, "sha256": self.sha256}


def normalize_text(text: str) -> str:
    """NFKC, casefolded, whitespace collapsed: the form exact de-duplication compares."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def split_of(content_hash: str, validation_percent: int, test_percent: int) -> str:
    """train / validation / test from a document's content hash: stable across runs and machines."""
    bucket = int(content_hash[:8], 16) % 100
    if bucket < validation_percent:
        return "validation"
    if bucket < validation_percent + test_percent:
        return "test"
    return "train"
