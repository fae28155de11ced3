"""Copy documents: a stretch of the training text's frequent words, repeated; seeded."""

import pytest

from workers.data.copies import REPEATS, STRETCH_WORDS, copy_documents, frequent_words
from workers.data.sources import python_docs_corpus


@pytest.fixture(scope="module")
def texts():
    return python_docs_corpus()[:40]


def test_each_document_is_one_stretch_of_frequent_words_written_again(texts):
    words = set(frequent_words(texts))
    docs = copy_documents(50, texts, seed=3)
    for doc in docs:
        lines = doc.text.split("\n")
        assert REPEATS[0] <= len(lines) <= REPEATS[1] and len(set(lines)) == 1
        stretch = lines[0].split(" ")
        assert STRETCH_WORDS[0] <= len(stretch) <= STRETCH_WORDS[1]
        assert set(stretch) <= words
        assert doc.split == "train" and doc.meta["task"] == "copies"
    assert len({d.text for d in docs}) == len(docs)  # every stretch its own


def test_the_same_seed_and_stream_give_the_same_documents_and_another_stream_others(texts):
    first = [d.text for d in copy_documents(5, texts, seed=1, stream="a")]
    assert first == [d.text for d in copy_documents(5, texts, seed=1, stream="a")]
    assert set(first).isdisjoint(d.text for d in copy_documents(5, texts, seed=1, stream="b"))


def test_frequent_words_come_most_frequent_first():
    assert frequent_words(["b a a c a b"], 2) == ["a", "b"]


def test_too_little_text_is_refused_naming_what_is_missing():
    with pytest.raises(ValueError, match="distinct words"):
        copy_documents(1, ["only a few words here"], seed=0)
