import json
import re
from collections import Counter

import numpy as np
import pytest

from model.tokenizer import Tokenizer
from workers.data.needles import NEEDLE_CITIES, needle_question, needle_sentence
from workers.data.records import Document
from workers.data.retrieval import (
    DRILL_FACTS,
    EVAL_VALUE,
    RETRIEVAL_VARIANTS,
    TEMPLATES,
    check_disjoint,
    draw_facts,
    eval_template_hashes,
    recall_drills,
    retrieval_examples,
    template_hashes,
)
from workers.data.sources import python_docs_corpus


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return python_docs_corpus()


@pytest.fixture(scope="module")
def docs(corpus) -> list[Document]:
    return retrieval_examples(100, corpus, 375, seed=1)


def test_retrieval_is_deterministic_per_seed(corpus):
    a = retrieval_examples(10, corpus, 375, seed=3)
    assert [d.text for d in a] == [d.text for d in retrieval_examples(10, corpus, 375, seed=3)]
    assert [d.text for d in a] != [d.text for d in retrieval_examples(10, corpus, 375, seed=4)]


def test_retrieval_mixes_the_variants_evenly(docs):
    assert Counter(d.meta["variant"] for d in docs) == {v: 20 for v in RETRIEVAL_VARIANTS}
    assert all(d.split == "train" and d.modality == "text" and d.meta["task"] == "retrieval"
               for d in docs)


@pytest.fixture(scope="module")
def corpus_tokenizer(corpus) -> Tokenizer:
    return Tokenizer.train(corpus, vocab_size=4096)  # a corpus's vocabulary, not a test's 512


@pytest.mark.parametrize("tokens", [256, 1024])
def test_a_retrieval_document_fits_its_row_in_the_corpus_tokens(corpus, corpus_tokenizer, tokens):
    """A document longer than a row would be packed with its question cut from its facts: each
    is counted by the corpus's tokenizer (with <|bos|> and <|eos|>), and their lengths spread
    over the row, so questions are asked at every distance from their facts."""
    def count(text: str) -> int:
        return len(corpus_tokenizer.encode(text)) + 2

    docs = retrieval_examples(100, corpus, tokens, seed=2, count_tokens=count)
    lengths = [count(d.text) for d in docs]
    assert max(lengths) <= tokens
    assert min(lengths) < 0.6 * tokens and max(lengths) > 0.8 * tokens
    lists = [d for d in docs if d.meta["variant"] == "fact_list"]
    assert min(len(json.loads(d.meta["facts"])) for d in lists) >= 2  # fewer facts, not none


def test_every_answer_is_planted_before_its_question(docs):
    for doc in docs:
        body, questions = doc.text.rsplit("\n\n", 1)
        for qa in questions.split("\n"):
            question, answer = re.fullmatch(r"Question: (.+) Answer: (.+)", qa).groups()
            assert all(value in body for value in answer.split(", ")), doc.uri


def test_facts_sit_at_sentence_breaks_of_untouched_training_text(corpus, docs):
    for doc in docs:
        if doc.meta["variant"] == "fact_list":
            continue
        haystack = doc.text.rsplit("\n\n", 1)[0]
        depths = [float(x) for x in doc.meta["depth"].split(",")]
        assert depths == sorted(depths) and all(0 <= d < 1 for d in depths)
        for fact in json.loads(doc.meta["facts"]):
            at = haystack.index(fact + " ")
            assert at == 0 or haystack[at - 2:at] in (". ", ".\n") or haystack[at - 1] == " ", doc.uri
            haystack = haystack.replace(fact + " ", "", 1)
        # without its facts, the haystack is training text: no word was split
        assert all(any(chunk.strip() in t for t in corpus) for chunk in haystack.split("\n\n")
                   if chunk.strip()), doc.uri


def test_multi_variants_ask_for_several_values(docs):
    for doc in docs:
        answer = doc.meta["answer"].split(", ")
        if doc.meta["variant"] in ("multi_value", "multi_needle"):
            assert 2 <= len(answer) <= 5
        if doc.meta["variant"] in ("single", "multi_key"):
            assert len(answer) == 1
        if doc.meta["variant"] == "single":  # one fact, nothing to choose between
            assert len(json.loads(doc.meta["facts"])) == 1, doc.uri
    lists = {doc.text.rsplit("Question: ", 1)[1].split(" ", 1)[0] for doc in docs
             if doc.meta["variant"] == "multi_needle"}
    assert lists == {"List", "What", "Give"}  # asked in several phrasings


def test_training_facts_are_disjoint_from_the_eval_needle(docs):
    """By template (hashes of the wording with its slots blanked), by key (no city), by value
    format (no seven digits) and by wording (no 'special magic' anywhere)."""
    assert not template_hashes() & eval_template_hashes()
    assert len(eval_template_hashes()) == 3  # the needle, its question, the multi-needle question
    check_disjoint(docs)
    rng = np.random.default_rng(0)
    facts = [f for _ in range(300) for f in draw_facts(rng, 3)]
    assert not {f.key for f in facts} & set(NEEDLE_CITIES)
    assert not any(EVAL_VALUE.fullmatch(f.value) for f in facts)
    assert len({t[0] for t in TEMPLATES}) == len(TEMPLATES)
    assert len({f.statement.split(f.key)[0] for f in facts}) > 4  # many phrasings, not one
    # the value after its verb or after a colon, as text writes it: neither is the eval's shape
    assert {": " in f.statement for f in facts} == {True, False}


def test_an_eval_needle_in_training_text_is_refused(corpus):
    doc = retrieval_examples(2, corpus, 375, seed=0)[1]
    planted = Document(source=doc.source, uri=doc.uri, modality="text", license="",
                       texts=[needle_sentence("Oslo", "1234567") + " " + doc.text], split="train",
                       meta=doc.meta)
    with pytest.raises(ValueError, match="eval needle's wording"):
        check_disjoint([planted])
    asked = Document(source=doc.source, uri=doc.uri, modality="text", license="", split="train",
                     texts=[doc.text + f"\nQuestion: {needle_question('Lima')} Answer: 7"],
                     meta=doc.meta)
    with pytest.raises(ValueError, match="eval needle's wording"):
        check_disjoint([asked])


def test_retrieval_refuses_texts_without_sentence_breaks():
    with pytest.raises(ValueError, match="sentence breaks"):
        retrieval_examples(2, ["no full stop anywhere in this text " * 200], 375, seed=0)


def test_two_corpora_with_one_seed_draw_different_facts(corpus):
    pretrain = retrieval_examples(5, corpus, 375, seed=0, stream="demo")
    long = retrieval_examples(5, corpus, 375, seed=0, stream="demo-long")
    assert not {d.text for d in pretrain} & {d.text for d in long}


def test_a_recall_drill_recalls_every_listed_fact_in_another_order():
    drills = recall_drills(30, seed=2, stream="demo")
    check_disjoint(drills)
    reordered = 0
    for doc in drills:
        listed, recall = doc.text.split("\nRecall: ")
        facts = json.loads(doc.meta["facts"])
        assert listed == " ".join(facts) and DRILL_FACTS[0] <= len(facts) <= DRILL_FACTS[1]
        recalled = [f.rstrip(".") for f in recall.split(". ")]
        assert sorted(recalled) == sorted(f.rstrip(".") for f in facts)  # the same facts
        values = [f.split(": ")[1] for f in recalled]
        assert doc.meta["answer"] == ", ".join(values)  # the values in recall order
        reordered += recall != listed
        assert doc.split == "train" and doc.meta["task"] == "drills"
    assert reordered > 20  # another order, not a copy of the list
    assert not {d.text for d in drills} & {d.text for d in recall_drills(30, seed=2, stream="x")}
