import json

import numpy as np
import pytest
import torch

from model.encoders import placeholder_count
from workers.data import media_sources as ms
from workers.data.media import audio_item
from workers.data.needles import NEEDLE_CITIES, draw_needle, needle_question, needle_sentence
from workers.data.readers import READERS, ReadContext
from workers.data.records import Document, Quarantined
from workers.data.sources import python_docs_corpus
from workers.data.spec import SourceSpec


@pytest.fixture
def ctx(tmp_path, tiny_cfg):
    return ReadContext(cache_dir=tmp_path, model=tiny_cfg, image_size=32, video_frames=6,
                       video_fps=2.0, audio_max_seconds=14.0, seed=3)


def _spec(reader: str, modality: str, **options) -> SourceSpec:
    # Unvalidated: SourceSpec's validation imports every reader module, not only this one.
    return SourceSpec.model_construct(name=f"{reader}-src", modality=modality,
                                      location="builtin", reader=reader, weight=1.0, split="auto",
                                      license="", options=options)


def _read_all(spec: SourceSpec, ctx: ReadContext) -> list[Document | Quarantined]:
    reader = READERS[spec.reader]
    return [record for item in reader.list_items(spec, ctx)
            for record in reader.read(spec, item, ctx)]


def _check_contract(doc: Document, spec: SourceSpec, ctx: ReadContext) -> None:
    assert doc.source == spec.name and doc.uri.startswith(f"builtin://{spec.reader}/")
    assert doc.modality == spec.modality and doc.split is None and doc.license
    assert len(doc.texts) == 2 and len(doc.media) == 1 and doc.texts[1].strip()
    item = doc.media[0]
    assert placeholder_count(item.kind, torch.from_numpy(item.array), ctx.model) >= 1
    assert Document.from_row(doc.to_row()).content_hash() == doc.content_hash()


def test_digits_are_captioned_with_their_digit(ctx):
    spec = _spec("sklearn-digits", "image", max_docs=5)
    docs = _read_all(spec, ctx)
    assert len(docs) == 5 and len({d.uri for d in docs}) == 5
    labels = ms._digits()[1]
    for i, doc in enumerate(docs):
        _check_contract(doc, spec, ctx)
        assert doc.texts[0] == "Image: " and f"handwritten {labels[i]}." in doc.texts[1]
        assert doc.media[0].array.shape == (3, 32, 32) and doc.media[0].array.std() > 20


def test_sample_images_are_real_varied_pictures_with_licenses(ctx):
    spec = _spec("sample-images", "image")
    docs = _read_all(spec, ctx)
    keys = [d.uri.removeprefix("builtin://sample-images/") for d in docs]
    assert keys == [image.key for image in ms.SAMPLE_IMAGES]
    for doc in docs:
        _check_contract(doc, spec, ctx)
        assert doc.media[0].array.std() > 10
    assert len({d.content_hash() for d in docs}) == len(docs)
    assert len({d.texts[1] for d in docs}) == len(docs)
    assert {d.license for d in docs} >= {"CC0-1.0", "CC-BY-2.0 (vultilion on Flickr)"}


def test_speech_documents_are_spoken_transcripts(ctx):
    spec = _spec("speech", "audio", max_docs=3, voices=["en-us", "en+m3"])
    docs = _read_all(spec, ctx)
    assert len(docs) == 3
    assert [d.meta["voice"] for d in docs] == ["en-us", "en+m3", "en-us"]
    for doc in docs:
        _check_contract(doc, spec, ctx)
        frames = doc.media[0].array.astype(np.float32)  # (F, 32) log-mel
        assert frames.shape[1] == ctx.model.audio_n_mels and frames.shape[0] > 100
        assert frames.std(axis=0).mean() > 0.1  # changes over time: speech, not a tone or silence
        sentence = doc.texts[1].removeprefix(" Transcript: ")
        assert sentence in ms._docs_sentences()


def test_speech_is_loud_grows_with_text_and_differs_by_voice():
    short, rate = ms.synthesize_speech("The cat sat down.")
    long, _ = ms.synthesize_speech("The cat sat down, and then it slept in the sun all afternoon.")
    assert rate > 8000 and short.dtype == np.float32 and np.abs(short).max() <= 1.0
    assert np.sqrt(np.mean(short ** 2)) > 0.02
    assert len(long) > 2 * len(short)
    faster, _ = ms.synthesize_speech("The cat sat down.", rate_wpm=300)
    assert len(faster) < len(short)
    other, _ = ms.synthesize_speech("The cat sat down.", voice="en-us+f3")
    assert len(other) != len(short) or not np.allclose(other, short)


def test_speech_is_deterministic_whatever_came_before():
    first, _ = ms.synthesize_speech("Determinism matters.", voice="en-us+f3")
    ms.synthesize_speech("Something else entirely, said in between.", voice="en+m3")
    again, _ = ms.synthesize_speech("Determinism matters.", voice="en-us+f3")
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("voice", ["xx-nowhere", "en-us+nosuchvariant"])
def test_unknown_voices_fail_clearly(voice, ctx):
    with pytest.raises(ValueError, match="voice"):
        ms.synthesize_speech("Hello.", voice=voice)
    with pytest.raises(ValueError, match="voice"):
        READERS["speech"].list_items(_spec("speech", "audio", voices=[voice]), ctx)


def test_video_synth_shows_pans_moving_digits_and_sentences(ctx):
    spec = _spec("video-synth", "video", max_docs=3)
    pan, digit, text = _read_all(spec, ctx)
    assert [d.meta["motion"] for d in (pan, digit, text)] == ["pan", "digit", "text"]
    for doc in (pan, digit, text):
        _check_contract(doc, spec, ctx)
        frames = doc.media[0].array  # (F, 3, 32, 32)
        assert frames.shape == (6, 3, 32, 32) and doc.media[0].fps == 2.0
        assert all(np.abs(np.diff(frames.astype(int), axis=0)).sum(axis=(1, 2, 3)) > 0)  # moves
    brightness = digit.media[0].array.astype(float).mean(axis=1)  # (F, H, W)
    ys, xs = np.mgrid[:32, :32]
    cx = (brightness * xs).sum(axis=(1, 2)) / brightness.sum(axis=(1, 2))
    cy = (brightness * ys).sum(axis=(1, 2)) / brightness.sum(axis=(1, 2))
    motion = digit.texts[1].split(" moves from ")[1].rstrip(".")
    centre = cx if motion.endswith(("left", "right")) else cy
    forward = np.diff(centre) > 0
    assert forward.all() if motion in ("left to right", "top to bottom") else (~forward).all()


def test_readers_are_deterministic_and_max_docs_takes_a_prefix(ctx):
    for reader, modality in [("sklearn-digits", "image"), ("video-synth", "video")]:
        four = [d.content_hash() for d in _read_all(_spec(reader, modality, max_docs=4), ctx)]
        two = [d.content_hash() for d in _read_all(_spec(reader, modality, max_docs=2), ctx)]
        assert len(four) == 4 and two == four[:2]
        assert _read_all(_spec(reader, modality, max_docs=0), ctx) == []
    first, = _read_all(_spec("speech", "audio", max_docs=1), ctx)
    again, = _read_all(_spec("speech", "audio", max_docs=1), ctx)
    assert first.content_hash() == again.content_hash()


def test_bad_options_are_refused(ctx):
    with pytest.raises(ValueError, match="unknown: voices"):
        READERS["sklearn-digits"].list_items(_spec("sklearn-digits", "image", voices=["en"]), ctx)
    with pytest.raises(ValueError, match="max_docs"):
        READERS["video-synth"].list_items(_spec("video-synth", "video", max_docs=-1), ctx)


def test_unusable_items_are_quarantined_not_raised(ctx):
    spec = _spec("sample-images", "image")
    missing, = READERS["sample-images"].read(spec, "skimage/no_such_picture", ctx)
    assert isinstance(missing, Quarantined) and missing.stage == "read"
    assert "no_such_picture" in missing.reason
    odd_size = ReadContext(cache_dir=ctx.cache_dir, model=ctx.model, image_size=30)  # patch is 4
    rejected, = READERS["sample-images"].read(spec, "skimage/coffee", odd_size)
    assert rejected.stage == "validate" and "patch size" in rejected.reason


def test_render_text_frame_wraps_and_stays_inside(ctx):
    text = "A fairly long sentence that cannot possibly fit on one line of a small frame."
    frame = ms.render_text_frame(text, 96, seed=1)
    assert frame.shape == (96, 96, 3) and frame.dtype == np.uint8
    inked_rows = np.nonzero((frame < 128).any(axis=(1, 2)))[0]
    assert inked_rows.size and inked_rows.max() - inked_rows.min() > 30  # several lines
    inside = np.zeros(frame.shape[:2], bool)
    inside[4:-4, 4:-4] = True
    assert (frame[~inside] == 255).all()  # the margin stays blank
    dark = ms.render_text_frame("Light on dark.", 64, background=(10, 10, 10))
    assert dark.max() > 128
    photo = ms.load_sample_image("skimage/coffee")
    on_photo = ms.render_text_frame("Over a photo.", 64, background=photo)
    assert (on_photo == 255).all(axis=2).sum() > 200 and on_photo.std() > 30  # a panel on a picture
    with pytest.raises(ValueError, match="empty"):
        ms.render_text_frame("  ", 64)


def test_needle_wording_and_draw():
    city, number = draw_needle(np.random.default_rng(0))
    assert city in NEEDLE_CITIES and len(number) == 7 and number.isdigit()
    assert needle_sentence("Oslo", "1234567") == "The special magic Oslo number is: 1234567."
    assert needle_question("Oslo") == "What is the special magic Oslo number?"


def test_spoken_needle_is_spoken_among_the_haystack(ctx):
    haystack = python_docs_corpus()[:40]
    docs = ms.spoken_needle_examples(2, haystack, ctx, seed=5)
    for doc in docs:
        meta = doc.meta
        assert doc.modality == "audio" and meta["task"] == "spoken_needle"
        question, answer = doc.texts[1].removeprefix(" Question: ").split(" Answer: ")
        assert doc.texts[0] == "Listen: " and meta["key"] in question and answer == meta["value"]
        transcript = json.loads(meta["transcript"])
        fact = transcript[int(meta["needle_position"])]
        assert len(transcript) >= 2 and meta["key"] in fact and meta["value"] in fact
        assert "special magic" not in fact  # a training fact, never the eval's needle
        # the audio is exactly the transcript spoken in that order
        waves = [ms.synthesize_speech(sentence, meta["voice"]) for sentence in transcript]
        expected = audio_item(np.concatenate([w for w, _ in waves]), waves[0][1], ctx)
        np.testing.assert_array_equal(doc.media[0].array, expected.array)
        assert doc.media[0].array.shape[0] <= ctx.audio_max_seconds * 100 + 1  # 10 ms frames
    again = ms.spoken_needle_examples(2, haystack, ctx, seed=5)
    assert [d.content_hash() for d in again] == [d.content_hash() for d in docs]
    with pytest.raises(ValueError, match="no plain sentence"):
        ms.spoken_needle_examples(1, ["x = f(1)"], ctx, seed=0)


def test_frame_needle_hides_one_distinct_frame(ctx):
    docs = ms.frame_needle_examples(3, ctx, seed=2)
    positions = set()
    for doc in docs:
        assert doc.modality == "video" and doc.meta["task"] == "frame_needle" and doc.license
        assert doc.texts[0] == "Watch: " and doc.texts[1].endswith(f"Answer: {doc.meta['value']}")
        frames = doc.media[0].array.astype(int)  # (6, 3, 32, 32)
        assert frames.shape == (6, 3, 32, 32)
        assert placeholder_count("video", torch.from_numpy(doc.media[0].array), ctx.model) >= 1
        position = int(doc.meta["needle_position"])
        positions.add(position)
        others = np.delete(frames, position, axis=0)
        assert (np.abs(others - frames[position]).sum(axis=(1, 2, 3)) > 0).all()
    again = ms.frame_needle_examples(3, ctx, seed=2)
    assert [d.content_hash() for d in again] == [d.content_hash() for d in docs]
    assert docs[0].content_hash() != ms.frame_needle_examples(1, ctx, seed=9)[0].content_hash()
