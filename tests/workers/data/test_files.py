"""The file readers over a tree of good and broken user files: every broken file quarantined
with its reason, every good one a document, nothing raised, nothing lost."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from tests.workers.data.broken_corpus import (GOOD, MAX_FILE_BYTES, SOURCES, TRIPWIRE,
                                              corpus_context, write_broken_corpus)
from workers.data.readers import all_readers
from workers.data.records import Document, Quarantined
from workers.data.spec import SourceSpec


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("corpus").resolve()
    return root, write_broken_corpus(root)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return corpus_context(tmp_path_factory.mktemp("cache"))


def _source(reader: str, modality: str, location: Path | str,
            options: dict | None = None) -> SourceSpec:
    return SourceSpec(name="user-files", modality=modality, location=str(location), reader=reader,
                      license="CC0-1.0", options=options or {})


def _read_all(spec: SourceSpec, ctx) -> list[Document | Quarantined]:
    reader = all_readers()[spec.reader]
    return [result for item in reader.list_items(spec, ctx)
            for result in reader.read(spec, item, ctx)]


@pytest.fixture(scope="module")
def results(corpus, ctx) -> dict[str, Document | Quarantined]:
    """Every reader over its folder: {uri relative to the root: what came out}."""
    root, _ = corpus
    out = {}
    for reader, modality, folder, options in SOURCES:
        for result in _read_all(_source(reader, modality, root / folder, options), ctx):
            key = str(Path(result.uri).relative_to(root))
            assert key not in out, f"{key} came out twice"
            out[key] = result
    return out


def test_the_corpus_holds_enough_kinds_of_breakage(corpus):
    _, expected = corpus
    assert len({reason for reason in expected.values() if reason != GOOD}) >= 15
    assert {folder for _, _, folder, _ in SOURCES} == {key.split("/")[0] for key in expected}


def test_every_file_and_line_comes_out_exactly_once(corpus, results):
    _, expected = corpus
    assert sorted(results) == sorted(expected)
    documents = [r for r in results.values() if isinstance(r, Document)]
    assert len(documents) == sum(reason == GOOD for reason in expected.values())


def test_broken_inputs_are_quarantined_with_their_reason(corpus, results):
    _, expected = corpus
    for key, reason in expected.items():
        result = results[key]
        if reason == GOOD:
            assert isinstance(result, Document), f"{key}: {result}"
        else:
            assert isinstance(result, Quarantined), f"{key} was not quarantined"
            assert reason in result.reason, f"{key}: {result.reason!r} lacks {reason!r}"
            assert result.source == "user-files" and result.stage in ("read", "decode", "validate")


def test_quarantine_records_carry_the_size_and_digest_of_what_was_read(corpus, results):
    root, _ = corpus
    truncated = results["images/truncated.png"]
    data = (root / "images/truncated.png").read_bytes()
    assert (truncated.size_bytes, truncated.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    too_large = results["text/huge.txt"]
    assert too_large.size_bytes == (root / "text/huge.txt").stat().st_size > MAX_FILE_BYTES
    assert too_large.sha256 == ""  # refused before reading
    line = results["jsonl/mixed.jsonl#L2"]
    assert line.sha256 == hashlib.sha256(b'{"text": "unterminated').hexdigest()


def test_good_documents_carry_their_media_and_text(results, ctx):
    side = ctx.image_size
    text = results["text/guide.rst"]
    assert text.modality == "text" and text.texts[0].startswith("Coroutines")  # BOM dropped
    assert text.license == "CC0-1.0" and text.split is None

    image = results["images/digit_0.png"]
    assert image.texts == ["", "a handwritten zero"]  # the sidecar caption
    assert image.media[0].kind == "image" and image.media[0].array.shape == (3, side, side)
    assert results["images/scan_of_5.jpeg"].texts == ["", "scan of 5"]  # no sidecar: the name

    sweep = results["audio/sweep.wav"]
    assert sweep.texts == ["", "a rising whistle"]
    mono, stereo = sweep.media[0].array, results["audio/tones_stereo.wav"].media[0].array
    assert sweep.media[0].kind == "audio" and mono.shape[1] == ctx.model.audio_n_mels
    assert np.isfinite(stereo.astype(np.float32)).all() and stereo.shape[0] < mono.shape[0]  # 0.8 s

    for name in ("video/square.gif", "video/square.webp", "video/clip.npz"):
        video = results[name].media[0]
        assert video.kind == "video" and video.array.shape[1:] == (3, side, side)
        assert video.array.shape[0] >= 2 and video.fps == pytest.approx(ctx.video_fps)
    assert results["video/square.gif"].texts[1] == "a red square slides to the right"

    page = results["interleaved/pages.jsonl#L1"]
    assert page.modality == "interleaved" and page.texts == ["Two digits: ", " and ", "."]
    assert [m.array.shape for m in page.media] == [(3, side, side)] * 2


def test_pickled_arrays_are_refused_without_being_unpickled(corpus, results):
    root, _ = corpus
    assert "allow_pickle=False" in results["video/pickled.npz"].reason
    assert not (root / TRIPWIRE).exists()
    assert np.load(root / "video/pickled.npz", allow_pickle=True)["frames"][1] == "frame"
    assert (root / TRIPWIRE).exists()  # the tripwire is live
    (root / TRIPWIRE).unlink()


def test_a_glob_reads_only_what_it_matches_and_skips_their_sidecars(corpus, ctx):
    root, expected = corpus
    spec = _source("image-files", "image", f"{root}/images/digit_*")
    uris = all_readers()["image-files"].list_items(spec, ctx)
    assert [Path(u).name for u in uris] == ["digit_0.png", "digit_1.jpg", "digit_2.bmp",
                                            "digit_3.webp", "digit_4.gif"]  # not digit_0.txt
    assert all(isinstance(r, Document) for r in _read_all(spec, ctx))


def test_a_single_file_is_a_location(corpus, ctx):
    root, _ = corpus
    [doc] = _read_all(_source("text-files", "text", root / "text/topic_0.txt"), ctx)
    assert doc.uri == str(root / "text/topic_0.txt")
    assert doc.text.startswith('The "assert" statement')


def test_an_unreachable_file_is_quarantined_with_the_storage_error(corpus, ctx):
    root, _ = corpus
    spec = _source("image-files", "image", root / "images")
    [gone] = all_readers()["image-files"].read(spec, str(root / "images/gone.png"), ctx)
    assert isinstance(gone, Quarantined) and gone.stage == "read"
    assert "gone.png" in gone.reason and "not a file" in gone.reason
