"""Text cleaning: normalisation, PII scrubbing (caught on crafted PII, quiet on real code),
toxicity scores and the length/toxicity filters."""

from __future__ import annotations

import numpy as np
import pytest

from workers.data.clean import clean_batch, clean_document, clean_text, scrub_pii, toxicity_score
from workers.data.records import Document, MediaItem, Quarantined
from workers.data.sources import python_docs_corpus, stdlib_sources
from workers.data.spec import FilterSpec

TOXIC = "you are a fucking stupid asshole and a worthless idiot"


def _text_doc(text: str, uri: str = "mem://doc") -> Document:
    return Document(source="s", uri=uri, modality="text", texts=[text])


def _image_doc(caption: str) -> Document:
    return Document(source="s", uri="mem://img", modality="image", texts=["", caption],
                    media=[MediaItem("image", np.zeros((3, 8, 8), np.uint8))])


def test_clean_text_normalises_unicode_line_endings_controls_and_blank_lines():
    raw = "cafe\u0301\r\nline\rnext\x00\x1b[0m\x85\n\n\n\n\n  \n\tindented\n\n\nkept"
    assert clean_text(raw) == "caf\u00e9\nline\nnext[0m\n\n\n\tindented\n\n\nkept"
    assert clean_text(clean_text(raw)) == clean_text(raw)


@pytest.mark.parametrize("text, kind", [
    ("write to jane.doe+work@example.co.uk today", "email"),
    ("call +44 20 7946 0958 now", "phone"),
    ("call +49 30 901820 now", "phone"),
    ("call +1-202-555-0143 now", "phone"),
    ("call (202) 555-0143 now", "phone"),
    ("call 202.555.0143.", "phone"),
    ("card 4111 1111 1111 1111 expires", "card"),
    ("card 5500-0000-0000-0004 expires", "card"),
    ("amex 378282246310005 expires", "card"),
    ("ssn 078-05-1120 on file", "ssn"),
    ("server at 192.168.1.20.", "ip"),
    ("iban GB82 WEST 1234 5698 7654 32 please", "iban"),
    ("iban DE89370400440532013000 please", "iban"),
])
def test_scrub_pii_replaces_each_kind_with_a_plain_placeholder(text, kind):
    scrubbed, counts = scrub_pii(text)
    assert counts == {kind: 1}
    assert f"[{kind.upper()}]" in scrubbed and "<|" not in scrubbed
    assert not any(ch.isdigit() or ch == "@" for ch in scrubbed)  # nothing half-replaced


@pytest.mark.parametrize("text", [
    "Python 3.11.2 and version 1.2.3.4", "released 2024-01-15 12:30:45, 2024-01-15T10:00:00Z",
    "sha 3f786850e387550fdab836ed7e6dc881de23001b", "x = 0x1f2e3d4c5b6a7980; y = 1_000_000",
    "z = 1234567890123456  # fails the Luhn check", "n = 9223372036854775807; ts = 1700000000.123",
    "uuid 123e4567-e89b-12d3-a456-426614174000", "isbn 978-3-16-148410-0", "pi = 3.14159265358979",
    "matrix = a @ b.T; @functools.lru_cache", "ids 100-200-3000", "RFC section 8.2.4.44",
    "iban-like GB82 WEST 1234 5698 7654 33 (bad checksum)", "ssn-like 000-12-3456 and 666-12-3456",
])
def test_scrub_pii_leaves_code_numbers_alone(text):
    assert scrub_pii(text) == (text, {})


def test_scrub_pii_false_positive_rate_on_real_source_code_is_tiny():
    code = "\n".join(stdlib_sources(2_000_000))
    scrubbed, counts = scrub_pii(code)
    # the standard library holds real author emails and example IP addresses, nothing else
    assert set(counts) <= {"email", "ip"}
    assert sum(counts.values()) < 2e-5 * len(code)  # under 20 per megabyte
    prose = "\n".join(python_docs_corpus())
    assert scrub_pii(prose)[1].keys() <= {"email", "ip"}


def test_toxicity_scores_a_batch_in_order():
    benign = "The function returns a sorted list of the keys."
    scores = toxicity_score([benign, TOXIC, benign])
    assert scores[1] > 0.9 and scores[0] < 0.3 and scores[0] == scores[2]
    assert toxicity_score([]) == []


def test_clean_document_scrubs_scores_and_keeps_the_input_unchanged():
    doc = _text_doc("Mail a@example.com or b@example.org,\r\nor call 202-555-0143 today.")
    cleaned = clean_document(doc, FilterSpec())
    assert cleaned.text == "Mail [EMAIL] or [EMAIL],\nor call [PHONE] today."
    assert cleaned.meta["pii_email"] == "2" and cleaned.meta["pii_phone"] == "1"
    assert 0.0 <= float(cleaned.meta["toxicity"]) < 0.5
    assert doc.meta == {} and "\r\n" in doc.text
    kept = clean_document(doc, FilterSpec(scrub_pii=False))
    assert "a@example.com" in kept.text and "pii_email" not in kept.meta


def test_filters_quarantine_with_the_measured_value_and_the_limit():
    filters = FilterSpec(min_chars=20, max_chars=200, max_toxicity=0.5)
    docs = [_text_doc("too short"), _text_doc("x" * 300), _text_doc(TOXIC)]
    short, long_, toxic = clean_batch(docs, filters)
    assert isinstance(short, Quarantined) and short.stage == "clean"
    assert short.reason == "too short: 9 chars < min_chars 20"
    assert long_.reason == "too long: 300 chars > max_chars 200"
    assert toxic.reason.startswith("too toxic: ") and toxic.reason.endswith("> max_toxicity 0.5")
    assert toxic.sha256 == _text_doc(TOXIC).content_hash()


def test_a_short_caption_passes_but_an_oversized_one_does_not():
    filters = FilterSpec(min_chars=20, max_chars=200)
    caption, huge = clean_batch([_image_doc("a cat"), _image_doc("y" * 300)], filters)
    assert isinstance(caption, Document) and caption.media[0].kind == "image"
    assert isinstance(huge, Quarantined) and "max_chars 200" in huge.reason


def test_a_batch_gives_what_documents_one_by_one_give():
    texts = ["short", TOXIC, "A perfectly ordinary sentence about parsing files.", "ok " * 20]
    docs = [_text_doc(text, f"mem://{i}") for i, text in enumerate(texts)]
    filters = FilterSpec(min_chars=10, max_toxicity=0.8)
    assert clean_batch(docs, filters) == [clean_document(d, filters) for d in docs]
