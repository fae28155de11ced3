"""The retrieval curriculum: synthetic documents that teach a model to find a fact by its key
anywhere in its context and copy the value, mixed into the pretrain and long-context corpora.

The facts never use the evaluation's needle. The eval suite asks for "The special magic {city}
number is: {number}." (workers/data/needles.py); training facts are phrased from other templates
("Gerovin's hidden passcode is 58213.", "The reserve token of Talmek reads QX-4821."), keyed by
invented names rather than cities, with values of other formats (never seven digits), and asked
with other questions. So a model that answers the eval has learnt to retrieve, not a template:
`check_disjoint` is the test of that, by template and by hash.

Three kinds of documents, all seeded and all split="train":
- fact lists: a dozen facts among short filler sentences, then questions about several of them
  (dense supervision: the curriculum's first steps); recall drills, the densest form: a few
  facts as "Key: value.", then recalled in another order (`recall_drills`);
- haystacks: one or more facts hidden at sentence breaks of real training-split text, then a
  question (single, multi_key, multi_value, multi_needle, as the report's variants);
- every question is answered right after it, and the loss covers every token.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from workers.data.needles import (NEEDLE_CITIES, join_names, multi_needle_question,
                                  needle_question, needle_sentence)
from workers.data.records import Document
from workers.data.synth import PROJECT_LICENSE

FACT_TASKS = ("retrieval", "drills", "spoken_needle", "frame_needle")  # documents with facts
RETRIEVAL_VARIANTS = ("fact_list", "single", "multi_key", "multi_value", "multi_needle")
MULTI_FACTS = (2, 5)  # facts planted by the multi_* variants: at least, at most
LIST_FACTS = (6, 16)
LIST_QUESTIONS = 4
DRILL_FACTS = (3, 8)  # facts of a recall drill: at least, at most
# invented names and numbers take about 1.5 times the tokens of prose per character: a document's
# budget in characters (about 4 a token) counts a fact's characters that much more
FACT_CHARS_WEIGHT = 1.5
CHARS_PER_TOKEN = 4.0  # the estimate where no tokenizer counts
SAMPLE_CHUNKS, CHUNK_CHARS = 8, 300  # measuring characters per token: short enough for any model
FIT_TRIES = 6  # documents drawn shorter before deciding none fits its tokens
LENGTH_SHARE = 0.4  # a document takes 0.4 to all of its token budget, drawn uniformly
COLON_SHARE = 0.5  # facts whose value follows a colon ("... is: 58213."), as data often writes
HAYSTACK_DRAWS = 20  # windows tried before deciding the texts cannot hold the facts
SENTENCE_BREAK = re.compile(r"\.[ \n]")

# Attributes a fact names: an adjective and a noun, neither the eval's "special magic number".
ADJECTIVES = ("secret", "hidden", "private", "lucky", "golden", "silver", "backup", "reserve",
              "master", "daily", "current", "spare", "winning", "quiet", "northern", "official")
NOUNS = ("code", "passcode", "password", "pin", "token", "tag", "serial", "ticket", "label",
         "figure", "key", "combination", "reference", "badge", "entry", "cipher")
# (fact statement, question) pairs over {attr} "hidden passcode", {key} and {value}
TEMPLATES = (
    ("{Key}'s {attr} is {value}.", "What is {Key}'s {attr}?"),
    ("The {attr} of {Key} is {value}.", "What is the {attr} of {Key}?"),
    ("The {attr} for {Key} reads {value}.", "What does the {attr} for {Key} read?"),
    ("Remember that the {Key} {attr} is {value}.", "What is the {Key} {attr}?"),
    ("For {Key}, the {attr} was set to {value}.", "What was the {attr} for {Key} set to?"),
    ("{Key} keeps {value} as the {attr}.", "Which {attr} does {Key} keep?"),
    ("Note: the {attr} assigned to {Key} is {value}.", "Which {attr} is assigned to {Key}?"),
    ("The {Key} {attr} equals {value}.", "What does the {Key} {attr} equal?"),
)
# Keys are invented names (capitalised, like the eval's cities, but never one of them)
ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t",
          "th", "v", "z")
NUCLEI = ("a", "e", "i", "o", "u", "ai", "ea", "ou")
CODAS = ("", "", "n", "r", "l", "s", "k", "m", "th", "nd")
VALUE_DIGITS = (4, 5, 6, 8, 9)  # the eval's values have seven digits: never these
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"

EVAL_NEEDLE = re.compile(r"special\s+magic", re.IGNORECASE)
EVAL_VALUE = re.compile(r"(?<![\d-])\d{7}(?![\d-])")
FILLER = ("The archive was reorganised last spring.", "Nobody objected to the new schedule.",
          "Several entries were copied by hand.", "The weather stayed mild all week.",
          "A second list is kept in another room.", "The clerk signed every page.",
          "Most of the old notes were thrown away.", "The meeting ended early.")


@dataclass(frozen=True)
class Fact:
    key: str
    attr: str
    value: str
    statement: str
    question: str


def draw_key(rng: np.random.Generator) -> str:
    """An invented, pronounceable name of two or three syllables, never an eval city."""
    cities = {c.lower() for c in NEEDLE_CITIES}
    while True:
        syllables = [str(rng.choice(ONSETS)) + str(rng.choice(NUCLEI))
                     for _ in range(int(rng.integers(2, 4)))]
        key = ("".join(syllables) + str(rng.choice(CODAS))).capitalize()
        if key.lower() not in cities:
            return key


def draw_value(rng: np.random.Generator) -> str:
    """Digits of a length other than seven, or a letters-and-digits code."""
    if rng.random() < 0.75:
        digits = int(rng.choice(VALUE_DIGITS))
        return str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))
    letters = "".join(rng.choice(list(LETTERS), size=int(rng.integers(1, 3))))
    return f"{letters}-{int(rng.integers(100, 100000))}"


def draw_attr(rng: np.random.Generator) -> str:
    return f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"


def colon_form(statement: str) -> str | None:
    """The statement with its value after a colon ("... is: {value}."), where the value ends it."""
    return statement.replace(" {value}.", ": {value}.") if statement.endswith(" {value}.") else None


def make_fact(key: str, attr: str, value: str, rng: np.random.Generator) -> Fact:
    statement, question = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    if rng.random() < COLON_SHARE:
        statement = colon_form(statement) or statement
    fill = {"Key": key, "attr": attr, "value": value}
    return Fact(key, attr, value, statement.format(**fill), question.format(**fill))


def draw_facts(rng: np.random.Generator, n: int, one_key: bool = False) -> list[Fact]:
    """n facts with distinct values; distinct keys, or one key with n values (`one_key`)."""
    attr = draw_attr(rng)  # one attribute per document: the question must name the key
    keys: list[str] = []
    while len(keys) < n:
        key = keys[0] if one_key and keys else draw_key(rng)
        if one_key or key not in keys:
            keys.append(key)
    values: list[str] = []
    while len(values) < n:
        value = draw_value(rng)
        if value not in values:
            values.append(value)
    return [make_fact(k, attr, v, rng) for k, v in zip(keys, values)]


# questions for several keys' values at once, answered in the order asked
LIST_TEMPLATES = ("List the {attr}s of {keys}, in that order.", "What are the {attr}s of {keys}?",
                  "Give the {attr}s of {keys}.")


def _list_question(facts: list[Fact], rng: np.random.Generator) -> str:
    template = LIST_TEMPLATES[int(rng.integers(len(LIST_TEMPLATES)))]
    return template.format(attr=facts[0].attr, keys=join_names([f.key for f in facts]))


# ---------------------------------------------------------------------------------------------
# Documents

def retrieval_examples(count: int, haystack_texts: list[str], tokens: int, seed: int,
                       stream: str = "", count_tokens: Callable[[str], int] | None = None
                       ) -> list[Document]:
    """`count` retrieval documents, the variants in turn.

    haystack_texts must come from the TRAINING split only, so that no evaluation text leaks in.
    Each document takes between LENGTH_SHARE and all of `tokens` tokens, its length drawn
    uniformly (questions are asked across the whole row, as the evals ask them), counted by
    `count_tokens` (the corpus's tokenizer: a document never outgrows its packed row) or, without
    it, estimated at CHARS_PER_TOKEN. `stream` (the corpus's name) keeps two corpora with one seed
    from drawing the same facts. The document's license is left empty: a haystack keeps the
    licenses of the sources it was cut from.
    """
    if not haystack_texts:
        raise ValueError("retrieval_examples needs at least one haystack text")
    count_tokens = count_tokens or (lambda text: math.ceil(len(text) / CHARS_PER_TOKEN))
    cpt = chars_per_token(haystack_texts, count_tokens)
    docs = []
    for i in range(count):
        variant = RETRIEVAL_VARIANTS[i % len(RETRIEVAL_VARIANTS)]
        rng = np.random.default_rng([seed, zlib.crc32(stream.encode()), i])

        def document(chars: int) -> tuple[str, dict[str, str]]:
            if variant == "fact_list":
                return fact_list(rng, chars)
            return haystack_example(variant, haystack_texts, chars, rng)

        try:
            text, meta = fit_to_tokens(document, int(tokens * rng.uniform(LENGTH_SHARE, 1.0)),
                                       count_tokens, cpt)
        except ValueError:  # a draw shorter than its facts take: the whole budget
            text, meta = fit_to_tokens(document, tokens, count_tokens, cpt)
        docs.append(Document(source="synthetic.retrieval", uri=f"synthetic://retrieval/{seed}/{i}",
                             modality="text", texts=[text], license="", split="train",
                             meta={"task": "retrieval", "variant": variant, **meta}))
    return docs


def chars_per_token(texts: list[str], count_tokens: Callable[[str], int]) -> float:
    """Characters per token of the texts, measured on a few chunks spread through them."""
    joined = "\n\n".join(texts)
    starts = np.linspace(0, max(len(joined) - CHUNK_CHARS, 0), SAMPLE_CHUNKS).astype(int)
    chunks = [c for c in (joined[i:i + CHUNK_CHARS] for i in starts) if c.strip()]
    return sum(map(len, chunks)) / max(sum(count_tokens(c) for c in chunks), 1)


def fit_to_tokens(make: Callable[[int], tuple[str, dict]], tokens: int,
                  count_tokens: Callable[[str], int], cpt: float) -> tuple[str, dict]:
    """make(chars), whose first item is a text, drawn again shorter until the text takes at most
    `tokens` tokens: cut by the measured characters per token first, then by what was counted
    (text varies in density: code takes more tokens than prose, invented names more again)."""
    chars, counts = max(int(tokens * cpt), 1), []
    for _ in range(FIT_TRIES):
        made = make(chars)
        counts.append(count_tokens(made[0]))
        if counts[-1] <= tokens:
            return made
        chars = int(chars * tokens / counts[-1] * 0.95)
    raise ValueError(f"no text drawn fits {tokens} tokens in {FIT_TRIES} tries (the shortest "
                     f"took {min(counts)}): allow longer documents")


def recall_drills(count: int, seed: int, stream: str = "") -> list[Document]:
    """`count` recall drills (`drill`); `stream` as for retrieval_examples. The text is the
    project's own: no haystack."""
    docs = []
    for i in range(count):
        rng = np.random.default_rng([seed, zlib.crc32(f"{stream}/drills".encode()), i])
        text, meta = drill(rng)
        docs.append(Document(source="synthetic.drills", uri=f"synthetic://drills/{seed}/{i}",
                             modality="text", texts=[text], license=PROJECT_LICENSE, split="train",
                             meta={"task": "drills", **meta}))
    return docs


def drill(rng: np.random.Generator) -> tuple[str, dict[str, str]]:
    """Facts as "Key: value.", then "Recall:" and the same facts in another order: each value is
    found by its key alone, the lookup in its densest form. The text, and its meta (the values in
    recall order, the facts)."""
    facts = draw_facts(rng, int(rng.integers(DRILL_FACTS[0], DRILL_FACTS[1] + 1)))
    stated = [f"{f.key}: {f.value}." for f in facts]
    order = rng.permutation(len(facts))
    again = " ".join(stated[int(i)] for i in order)
    return f"{' '.join(stated)}\nRecall: {again}", {
        "answer": ", ".join(facts[int(i)].value for i in order),
        "facts": json.dumps(stated)}


def qa_text(question: str, answer: str) -> str:
    """The question/answer frame every retrieval document ends with."""
    return f"Question: {question} Answer: {answer}"


def fact_list(rng: np.random.Generator, chars: int | None = None) -> tuple[str, dict[str, str]]:
    """A fact list with its questions answered, and its meta (answers, facts). With `chars`, no
    longer than about that: fewer facts rather than a list that a packed row cuts from its
    questions."""
    facts = draw_facts(rng, int(rng.integers(LIST_FACTS[0], LIST_FACTS[1] + 1)))
    # a fact costs its statement, a filler sentence half the time (about 40 characters) and its
    # question and answer about half the time (with the frame's 20 characters)
    def cost(f: Fact) -> float:
        return FACT_CHARS_WEIGHT * (len(f.statement) + 30 + (len(f.question) + len(f.value)) / 2)

    while chars and len(facts) > MULTI_FACTS[0] and sum(map(cost, facts)) > chars:
        facts.pop()
    lines = []
    for fact in facts:
        if rng.random() < 0.5:
            lines.append(str(rng.choice(FILLER)))
        lines.append(fact.statement)
    asked = [facts[int(i)] for i in rng.permutation(len(facts))[:LIST_QUESTIONS]]
    questions = "\n".join(qa_text(f.question, f.value) for f in asked)
    return " ".join(lines) + "\n\n" + questions, {
        "answer": ", ".join(f.value for f in asked),
        "facts": json.dumps([f.statement for f in facts])}


def haystack_example(variant: str, texts: list[str], chars: int,
                     rng: np.random.Generator) -> tuple[str, dict[str, str]]:
    """Facts hidden in the texts, the question of the variant answered (about `chars` characters
    in all), and its meta (depths, answer, facts)."""
    least, most = (1, 1) if variant == "single" else MULTI_FACTS
    facts = draw_facts(rng, int(rng.integers(least, most + 1)), one_key=variant == "multi_value")

    def facts_chars() -> float:  # the facts' and the question's share of `chars`
        return FACT_CHARS_WEIGHT * sum(len(f.statement) + len(f.question) + len(f.value)
                                       for f in facts)

    while len(facts) > least and facts_chars() > chars / 2:  # fewer facts in a short document
        facts.pop()
    n = len(facts)
    haystack, breaks = haystack_with_room(texts, max(int(chars - facts_chars()), chars // 4), rng)
    # A break is as likely as the stretch of text it opens is long: depth is uniform, snapped back.
    weights = np.diff([*breaks, len(haystack)]) / len(haystack)
    # a short haystack may have fewer breaks than facts: then facts stand side by side
    positions = sorted(int(p) for p in rng.choice(breaks, size=n, replace=len(breaks) < n,
                                                   p=weights))
    text = insert_sentences(haystack, positions, [f.statement for f in facts])
    if variant == "multi_value":  # values in reading order
        qa = qa_text(f"What are all the values of the {facts[0].attr} of {facts[0].key}?",
                 ", ".join(f.value for f in facts))
    elif variant == "multi_needle":
        asked = [facts[int(i)] for i in rng.permutation(n)]
        qa = qa_text(_list_question(asked, rng), ", ".join(f.value for f in asked))
    else:  # single, multi_key: one fact asked, the others distract
        fact = facts[int(rng.integers(n))]
        qa = qa_text(fact.question, fact.value)
    depths = ",".join(f"{p / len(haystack):.3f}" for p in positions)
    return f"{text}\n\n{qa}", {"depth": depths, "answer": qa.rsplit("Answer: ", 1)[1],
                                "facts": json.dumps([f.statement for f in facts])}


def sentence_breaks(text: str) -> list[int]:
    """Where a sentence may be inserted: the start, and after each inner '. ' or '.\\n'."""
    return [0] + [m.end() for m in SENTENCE_BREAK.finditer(text) if m.end() < len(text)]


def haystack_with_room(texts: list[str], chars: int,
                       rng: np.random.Generator) -> tuple[str, list[int]]:
    """About `chars` characters of the texts, cut at sentence ends, and its sentence breaks."""
    for _ in range(HAYSTACK_DRAWS):
        haystack = _haystack(texts, chars, rng)
        if len(haystack) >= chars // 2:
            return haystack, sentence_breaks(haystack)
    raise ValueError(f"haystack_texts have too few sentence breaks ('. ' or '.\\n'): no "
                     f"haystack of about {chars} characters in {HAYSTACK_DRAWS} draws")


def _haystack(texts: list[str], chars: int, rng: np.random.Generator) -> str:
    """At most `chars` characters of the texts, from a sentence start to a sentence end."""
    first = texts[rng.integers(len(texts))]
    start = SENTENCE_BREAK.search(first, int(rng.integers(len(first) + 1)))
    begin = start.end() if start else 0
    window = first[begin:begin + chars].lstrip()
    while len(window) < chars:
        window += "\n\n" + texts[rng.integers(len(texts))][:chars]
    ends = [m.start() + 1 for m in SENTENCE_BREAK.finditer(window[:chars])]  # just after a '.'
    return window[:ends[-1]] if ends else ""


def insert_sentences(text: str, positions: list[int], sentences: list[str]) -> str:
    """Each sentence placed at its (ascending) position, followed by a space."""
    pieces = [text[:positions[0]]]
    for sentence, start, end in zip(sentences, positions, [*positions[1:], len(text)]):
        pieces += [sentence + " ", text[start:end]]
    return "".join(pieces)


# ---------------------------------------------------------------------------------------------
# Disjointness from the evaluation's needle

def template_hashes() -> set[str]:
    """sha256 of each training template (colon forms included) with its slots blanked: what the
    eval's are compared to."""
    forms = [t for pair in TEMPLATES for t in (*pair, colon_form(pair[0])) if t]
    forms += LIST_TEMPLATES
    return {_shape_hash(t) for t in forms}


def _shape_hash(template: str) -> str:
    return hashlib.sha256(re.sub(r"\{\w+\}", "{}", template).encode()).hexdigest()


def eval_template_hashes() -> set[str]:
    """The eval needle's sentence and questions (one needle, several), as templates (slots
    blanked) and hashed."""
    return {_shape_hash(needle_sentence("{city}", "{number}")),
            _shape_hash(needle_question("{city}")),
            _shape_hash(multi_needle_question(["{cities}"]))}


def check_disjoint(docs: list[Document]) -> None:
    """Refuse training retrieval text that contains the eval's needle wording, one of its keys
    (the cities) as a fact's key, or a value in its format (seven digits): the wording anywhere
    in the document, keys and values in its facts, its questions and its answers (a preference
    pair's chosen and rejected ones too)."""
    if template_hashes() & eval_template_hashes():
        raise ValueError("a training retrieval template is the eval needle's template")
    cities = re.compile(r"\b(" + "|".join(NEEDLE_CITIES) + r")\b")
    for doc in docs:
        facts = "\n".join([*json.loads(doc.meta.get("facts", "[]")),
                           *(doc.meta.get(k, "") for k in ("key", "value", "answer", "chosen",
                                                           "rejected")),
                           doc.text.rsplit("\n\n", 1)[-1]])
        for what, pattern, text in (("the eval needle's wording", EVAL_NEEDLE, doc.text),
                                    ("a seven-digit value", EVAL_VALUE, facts),
                                    ("an eval city as a key", cities, facts)):
            if pattern.search(text):
                raise ValueError(f"{doc.uri}: training retrieval text contains {what}")
