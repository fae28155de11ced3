"""Copy documents: a random stretch repeated. A model can predict the repeats only by copying by
content (an induction head, the mechanism retrieval is built on), and the stretch's length varies
from document to document, so copying by position cannot.

Two forms: token rows (`repeated_rows`, what the induction unit test and
benchmarks/induction_control.py train on) and text documents of a corpus (`copy_documents`, the
spec's `synthetic.copies`): a stretch of the training text's most frequent words, repeated, so
that the copy circuit forms in pretraining before the retrieval curriculum needs it.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter

import numpy as np
import torch

from workers.data.records import Document
from workers.data.synth import PROJECT_LICENSE  # a random draw of common words: our own text

COPY_WORDS = 512  # the most frequent words of the training text a stretch is drawn from
STRETCH_WORDS = (3, 30)  # words in a stretch: at least, at most
REPEATS = (2, 5)  # times a stretch is written: at least, at most


def repeated_rows(n: int, width: int, vocab: range, periods: tuple[int, int],
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, width) token rows from `vocab`, a stretch of `periods[0]` to `periods[1] - 1` tokens
    repeated after a prefix shorter than it; and the (n, width) mask of the tokens that repeat an
    earlier one (the second copy on)."""
    rows, repeats = [], []
    for _ in range(n):
        period = int(torch.randint(*periods, (), generator=generator))
        offset = int(torch.randint(0, period, (), generator=generator))
        stretch = torch.randint(vocab.start, vocab.stop, (period,), generator=generator)
        prefix = torch.randint(vocab.start, vocab.stop, (offset,), generator=generator)
        rows.append(torch.cat([prefix, stretch.repeat(width // period + 1)])[:width])  # (width,)
        repeats.append(torch.arange(width) >= offset + period)
    return torch.stack(rows), torch.stack(repeats)


def frequent_words(texts: list[str], count: int = COPY_WORDS) -> list[str]:
    """The `count` most frequent words (letters only) of the texts, most frequent first."""
    counts = Counter(w for text in texts for w in re.findall(r"[A-Za-z]+", text))
    return [w for w, _ in counts.most_common(count)]


def copy_documents(count: int, texts: list[str], seed: int, stream: str = "") -> list[Document]:
    """`count` documents, each a stretch of the texts' frequent words written two to five times.
    texts must be the TRAINING split's; `stream` (the corpus's name) keeps two corpora with one
    seed from drawing the same stretches."""
    words = frequent_words(texts)
    if len(words) < STRETCH_WORDS[1]:
        raise ValueError(f"copy documents need at least {STRETCH_WORDS[1]} distinct words in the "
                         f"training text; it has {len(words)}")
    docs = []
    for i in range(count):
        rng = np.random.default_rng([seed, zlib.crc32(stream.encode()), i])
        stretch = " ".join(rng.choice(words, int(rng.integers(*STRETCH_WORDS, endpoint=True))))
        repeats = int(rng.integers(*REPEATS, endpoint=True))
        docs.append(Document(source="synthetic.copies", uri=f"synthetic://copies/{seed}/{i}",
                             modality="text", texts=["\n".join([stretch] * repeats)],
                             license=PROJECT_LICENSE, split="train",
                             meta={"task": "copies", "repeats": str(repeats)}))
    return docs
