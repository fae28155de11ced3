"""The reader registry: how a corpus source turns into documents.

A reader splits a source into work items (small strings: a file URI, a chunk key) so that Ray
Data can read them in parallel, then reads one item into documents, or quarantine records for
what cannot be used. Readers never raise for bad input: they yield `Quarantined`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from model.config import ModelConfig, get_preset
from workers.data.records import Document, Quarantined

if TYPE_CHECKING:
    from workers.data.spec import SourceSpec


@dataclass
class ReadContext:
    """What every reader may need besides its source: where to cache, media settings, limits."""

    cache_dir: Path  # fetched artifacts (pinned sdists and wheels), extracted once
    model: ModelConfig = field(default_factory=lambda: get_preset("small"))  # patch size, audio features
    image_size: int = 64  # images are resized to image_size x image_size (a multiple of the patch)
    video_frames: int = 8  # frames sampled per video
    video_fps: float = 2.0  # the rate they are sampled at
    audio_max_seconds: float = 20.0
    max_file_bytes: int = 50_000_000  # larger inputs are quarantined, not read
    seed: int = 0


Item = str
ReadResult = Iterator[Document | Quarantined]


@dataclass(frozen=True)
class Reader:
    name: str
    modalities: tuple[str, ...]  # what it can produce
    builtin: bool  # True: data ships with a package (location "builtin"); False: reads files
    list_items: Callable[["SourceSpec", ReadContext], list[Item]]
    read: Callable[["SourceSpec", Item, ReadContext], ReadResult]
    license: str = ""  # builtin data's license, recorded in the manifest
    description: str = ""
    packages: tuple[str, ...] = ()  # the installed distributions the builtin data ships in


def package_licence(distribution: str) -> str:
    """A distribution's licence as its installed metadata states it: the SPDX expression, else
    its licence classifiers, else a one-line License field."""
    from importlib import metadata

    try:
        meta = metadata.metadata(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"
    if meta.get("License-Expression"):
        return meta["License-Expression"]
    classifiers = [c.rsplit(" :: ", 1)[-1] for c in meta.get_all("Classifier") or []
                   if c.startswith("License ::")]
    if classifiers:
        return ", ".join(classifiers)
    field = (meta.get("License") or "").strip()
    return field if field and "\n" not in field and len(field) <= 80 else "not stated in its metadata"


READERS: dict[str, Reader] = {}


def register(reader: Reader) -> Reader:
    if reader.name in READERS:
        raise ValueError(f"reader {reader.name!r} registered twice")
    READERS[reader.name] = reader
    return reader


def all_readers() -> dict[str, Reader]:
    """Every reader, importing the modules that register them."""
    from workers.data import files, media_sources, sources  # noqa: F401  (registration)
    return READERS
