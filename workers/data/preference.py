"""Preference pairs for the `preference` stage (DPO): a prompt, the response preferred and the
one rejected, from JSON lines or written here from the project's own material.

A pair travels through the data pipeline as a text `Document` whose text is the prompt and whose
meta holds the two responses (cleaned and PII-scrubbed like the prompt), and is tokenized into
one row per pair (`pair_row`, PREFERENCE_SCHEMA): the prompt followed by each response, padded
to seq_len + 1, the loss mask on the response's tokens. A pair longer than a row is quarantined,
never cut: a response cut short, or a haystack cut from its facts, would teach the wrong thing.

The built-in pairs (`preference_pairs`), each kind aimed at one failure the evals measure:
- refusal: a harmful request; a refusal chosen over a compliant opening;
- lookalike: a safe request that sounds unsafe; its answer chosen over a refusal (XSTest's
  over-refusal);
- retrieval: facts in a training-split haystack and a question (the curriculum's templates, never
  the eval's needle); the value chosen over another of its format that the text does not hold,
  every character redrawn. (Not a near miss sharing the value's tail: DPO would push that copy
  down with the rejected side's wrong first character; docs/training.md.)
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model.tokenizer import BOS_ID, EOS_ID, Tokenizer
from workers.data.pack import loss_mask_for
from workers.data.records import Document
from workers.data.synth import (INSTRUCTIONS, PROJECT_LICENSE, chat_text, draw_outside,
                                load_instructions, prompt_hash)

PAIR_TASK = "preference"
PAIR_KINDS = ("refusal", "lookalike", "retrieval")
PAIR_FIELDS = ("chosen", "rejected")  # the responses a pair's meta holds
DIGITS, LETTERS = "0123456789", "ABCDEFGHJKLMNPQRSTUVWXYZ"

# One row per pair: the chosen sequence in the columns a packed row has (so that a shard is
# described and read as any other), the rejected one beside it; both seq_len + 1 wide.
PREFERENCE_SCHEMA = pa.schema([
    ("tokens", pa.list_(pa.int32())), ("doc_ids", pa.list_(pa.int32())),
    ("loss_mask", pa.list_(pa.int8())),
    ("rejected_tokens", pa.list_(pa.int32())), ("rejected_doc_ids", pa.list_(pa.int32())),
    ("rejected_loss_mask", pa.list_(pa.int8())),
    ("source", pa.string()),  # the pair's kind, or the JSON line's `source`
])


class PairError(ValueError):
    """A preference pair that cannot be trained on; the message says why."""


class PreferencePair(BaseModel):
    """One JSON line of a preference file (docs/data.md, "Preference pairs")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1)  # the user's message (chat) or the text to continue
    chosen: str = Field(min_length=1)
    rejected: str = Field(min_length=1)
    source: str = Field("file", min_length=1, max_length=64)
    system: str | None = None  # a system prompt before the user's message (chat only)
    format: Literal["chat", "text"] = "chat"


def parse_pair(record: object) -> PreferencePair:
    if not isinstance(record, dict):
        raise PairError(f"a JSON {type(record).__name__}, not an object")
    try:
        pair = PreferencePair.model_validate(record)
    except ValidationError as e:
        err = e.errors()[0]
        raise PairError(f"{'.'.join(map(str, err['loc'])) or 'pair'}: {err['msg']}") from None
    if pair.chosen.strip() == pair.rejected.strip():
        raise PairError("chosen and rejected are the same response: nothing to prefer")
    if pair.system and pair.format == "text":
        raise PairError("a system prompt needs format chat")
    return pair


def pair_document(pair: PreferencePair, source: str, uri: str, license: str) -> Document:
    """The pair as the pipeline carries it: the prompt rendered in the model's format as the
    text (what de-duplication and the split hash), the responses in meta."""
    if pair.format == "chat":
        turns = [("system", pair.system)] if pair.system else []
        prompt = chat_text([*turns, ("user", pair.prompt)]) + "<|assistant|>"
        chosen, rejected = pair.chosen + "<|end|>", pair.rejected + "<|end|>"
    else:
        prompt, chosen, rejected = pair.prompt, pair.chosen, pair.rejected
    return Document(source=source, uri=uri, modality="text", texts=[prompt], license=license,
                    meta={"task": PAIR_TASK, "pair_source": pair.source,
                                       "format": pair.format, "chosen": chosen,
                                       "rejected": rejected,
                                       "prompt_hash": prompt_hash(pair.prompt)})


def is_pair(doc: Document) -> bool:
    return doc.meta.get("task") == PAIR_TASK


# ---------------------------------------------------------------------------------------------
# Tokenized rows


def pair_row(doc: Document, tokenizer: Tokenizer, seq_len: int) -> dict:
    """The pair as one PREFERENCE_SCHEMA row; PairError if a sequence outgrows seq_len + 1."""
    width = seq_len + 1
    prompt = [BOS_ID, *tokenizer.encode(doc.text)]
    row = {"source": doc.meta["pair_source"]}
    for name, prefix in (("chosen", ""), ("rejected", "rejected_")):
        ids = np.array([*prompt, *tokenizer.encode(doc.meta[name]), EOS_ID], dtype=np.int32)
        if len(ids) > width:
            raise PairError(f"the prompt and the {name} response take {len(ids)} tokens; rows "
                            f"hold {width} (raise packing.seq_len or shorten the pair)")
        mask = loss_mask_for(ids, chat=False)
        mask[:len(prompt)] = 0  # only the response is scored: log p(response | prompt)
        mask[-1] = 0  # nor the <|eos|> the builder closes every sequence with
        pad = width - len(ids)
        row[f"{prefix}tokens"] = np.concatenate([ids, np.zeros(pad, dtype=np.int32)])
        row[f"{prefix}doc_ids"] = np.concatenate([np.zeros(len(ids), dtype=np.int32),
                                                  np.full(pad, -1, dtype=np.int32)])
        row[f"{prefix}loss_mask"] = np.concatenate([mask, np.zeros(pad, dtype=np.int8)])
    return row


def pair_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pydict({name: [r[name] for r in rows] for name in PREFERENCE_SCHEMA.names},
                                schema=PREFERENCE_SCHEMA)


# ---------------------------------------------------------------------------------------------
# Built-in pairs


def preference_pairs(count: int, seed: int, haystacks: list[str], haystack_tokens: int,
                     count_tokens: Callable[[str], int], exclude_hashes: set[str] | None = None,
                     stream: str = "", instructions=INSTRUCTIONS) -> list[Document]:
    """`count` seeded pairs, the kinds in turn (PAIR_KINDS); none whose user prompt is in
    `exclude_hashes` (the evaluation sets' prompts, by normalized-text hash). Retrieval pairs
    are cut from `haystacks` (the training split) and take at most `haystack_tokens`."""
    from workers.data import retrieval

    spec = load_instructions(instructions)
    rng = random.Random(f"preference:{seed}:{stream}")
    exclude = exclude_hashes or set()
    cpt = retrieval.chars_per_token(haystacks, count_tokens) if haystacks else 0.0
    docs = []
    for i in range(count):
        kind = PAIR_KINDS[i % len(PAIR_KINDS)]
        if kind == "refusal":
            category, prompt, refusal = draw_outside("refusal", spec, rng, exclude)
            task = next(t for t in spec.refusal_categories[category].tasks if t in prompt)
            pair = PreferencePair(prompt=prompt, chosen=refusal, source=kind,
                                  rejected=rng.choice(spec.compliant_openings).format(task=task))
        elif kind == "lookalike":
            _, prompt, answer = draw_outside("lookalike", spec, rng, exclude)
            category = rng.choice(sorted(spec.refusal_categories))
            pair = PreferencePair(prompt=prompt, chosen=answer, source=kind,
                                  rejected=rng.choice(spec.refusal_categories[category].responses))
        else:
            if not haystacks:
                raise ValueError("retrieval pairs need training-split text for their haystacks")
            pair, facts = _retrieval_pair(
                np.random.default_rng([seed, zlib.crc32(stream.encode()), i]), haystacks,
                haystack_tokens, count_tokens, cpt)
        doc = pair_document(pair, "synthetic.preference", f"synthetic://preference/{seed}/{i}",
                            license="" if kind == "retrieval" else PROJECT_LICENSE)
        if kind == "retrieval":  # checked against the eval's needle with the curriculum
            doc.meta["facts"] = facts
        docs.append(doc)
    return docs


def _retrieval_pair(rng: np.random.Generator, haystacks: list[str], tokens: int,
                    count_tokens: Callable[[str], int], cpt: float) -> tuple[PreferencePair, str]:
    """A haystack pair, and its facts (JSON)."""
    from workers.data import retrieval

    variant = ("single", "multi_key")[int(rng.integers(2))]
    text, meta = retrieval.fit_to_tokens(
        lambda chars: retrieval.haystack_example(variant, haystacks, chars, rng),
        tokens, count_tokens, cpt)
    prompt = text.rsplit(" Answer: ", 1)[0] + " Answer:"
    value = meta["answer"]
    return PreferencePair(prompt=prompt, chosen=f" {value}",
                          rejected=f" {other_value(value, prompt, rng)}",
                          source="retrieval", format="text"), meta["facts"]


def other_value(value: str, text: str, rng: np.random.Generator) -> str:
    """A value of the same format (digits for digits, letters for letters, the rest kept),
    every character redrawn and the first one different, that `text` does not hold."""
    while True:
        other = "".join(str(rng.choice(list(_redrawn_from(c, first=i == 0))))
                        for i, c in enumerate(value))
        if other not in text:
            return other


def _redrawn_from(c: str, first: bool) -> str:
    """The characters a value's character `c` is redrawn from (a separator: itself)."""
    if c.isdigit():
        alphabet = DIGITS[1:] if first else DIGITS  # a leading zero would read as another format
    elif c.isalpha():
        alphabet = LETTERS
    else:
        return c
    return alphabet.replace(c, "") if first else alphabet

