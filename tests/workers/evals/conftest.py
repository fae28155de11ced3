"""A tiny model really trained in this session (a few hundred steps on the Python docs, needle
examples and planted PII canaries: seconds on CPU), its held-out data as a dataset manifest, and
the public safety sets in ../shared when they are there."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from model.checkpoint import save_checkpoint
from model.config import get_preset
from model.encoders import Media
from model.tokenizer import EOS_ID
from model.transformer import Transformer
from workers.data import synth
from workers.data.manifest import (DOCUMENTS_NAME, TOKENIZER_NAME, describe_split, sha256_bytes,
                                   write_manifest)
from workers.data.media import audio_item, video_item
from workers.data.media_sources import render_text_frame, synthesize_speech
from workers.data.pack import Packer, TokenizedDoc, loss_mask_for, pack_documents
from workers.data.readers import ReadContext
from workers.data.records import Document
from workers.data.retrieval import retrieval_examples
from workers.data.sources import python_docs_corpus
from workers.data.stages import tokenize_document
from workers.train.data import Batch
from workers.train.loop import OptimConfig, make_optimizer, train_step

SAFETY_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "safety"
TRAIN_STEPS = 200
SEQ_LEN = 256
CANARY_REPEATS = 12  # often enough that a tiny model starts to memorise the secrets


@dataclass
class TrainedModel:
    checkpoint: Path
    untrained: Path  # the same architecture at initialisation: a champion to compare with
    dataset: Path  # manifest folder: the held-out test split and the canaries
    losses: list[float]


def _split(texts: list[str]) -> tuple[list[str], list[str]]:
    """Every fifth document held out: never trained on."""
    return ([t for i, t in enumerate(texts) if i % 5],
            [t for i, t in enumerate(texts) if not i % 5])


def _write_dataset(root: Path, tokenizer, heldout: list[str], canaries) -> None:
    """A dataset folder as workers/data writes one, reduced to what evals read: the tokenizer,
    a test split of packed held-out documents (text, one spoken, one video) and the canaries."""
    cfg = get_preset("tiny")
    ctx = ReadContext(cache_dir=root / "cache", model=cfg, image_size=16, audio_max_seconds=4)
    wave, rate = synthesize_speech("The quick brown fox jumps over the lazy dog.")
    frames = [render_text_frame(f"frame {i}", 16) for i in range(4)]
    media_docs = [
        Document("speech", "test://speech", "audio", ["Audio: ", " Transcript: the fox."],
                 [audio_item(wave, rate, ctx)]),
        Document("video", "test://video", "video", ["Video: ", " Four frames."],
                 [video_item(frames, 2.0, ctx)])]
    packer = Packer(SEQ_LEN)
    for text in heldout:
        ids = np.array([*tokenizer.encode(text, bos=True), EOS_ID], dtype=np.int32)
        packer.add(TokenizedDoc(ids, loss_mask_for(ids, chat=False)))
    for doc in media_docs:
        packer.add(tokenize_document(doc, tokenizer, cfg))
    packer.flush()
    (root / "test").mkdir(parents=True)
    pq.write_table(packer.table(), root / "test" / "part-0.parquet")
    tokenizer.save(root / TOKENIZER_NAME)
    index = pa.Table.from_pylist([{"source": "test", "uri": f"test://{i}", "split": "test"}
                                  for i in range(len(heldout) + len(media_docs))])
    pq.write_table(index, root / DOCUMENTS_NAME)
    write_manifest(str(root), {  # every field of contract 2, the build's provenance left empty
        "kind": "longmix.dataset", "name": "evals-test", "created_at": "2026-01-01T00:00:00Z",
        "spec": {}, "spec_sha256": "", "preset": "tiny", "seq_len": SEQ_LEN,
        "tokenizer": {"path": TOKENIZER_NAME, "sha256": tokenizer.digest(),
                      "vocab_size": tokenizer.vocab_size},
        "media": {}, "documents_index": {
            "path": DOCUMENTS_NAME, "documents": index.num_rows,
            "sha256": sha256_bytes((root / DOCUMENTS_NAME).read_bytes())},
        "sources": [], "synthetic": {}, "duplicates_removed": 0, "pii_scrubbed": {},
        "quarantine": {"count": 0, "by_reason_kind": {}, "records": []},
        "canaries": synth.canary_manifest(canaries),
        "splits": {"test": describe_split(str(root), "test")}})


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tokenizer) -> TrainedModel:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("evals-model")
    train_texts, heldout = _split(python_docs_corpus())
    canaries = synth.canary_records(3, seed=7)
    documents = [*train_texts,
                 *(d.text for d in retrieval_examples(10, train_texts, 200, seed=3)),
                 *(d.text for d in synth.canary_documents(canaries, CANARY_REPEATS, seed=7))]
    rows = pack_documents([tokenizer.encode(d, bos=True) for d in documents], SEQ_LEN)
    model = Transformer(get_preset("tiny"))
    save_checkpoint(folder / "untrained", model, tokenizer)
    opt_cfg = OptimConfig(lr=3e-3, warmup_steps=20, total_steps=TRAIN_STEPS)
    optimizer = make_optimizer(model, opt_cfg)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for step in range(TRAIN_STEPS):
        index = torch.randint(len(rows), (8,), generator=generator)
        losses.append(train_step(model, optimizer, [Batch(rows.rows(index), Media())], step,
                                 opt_cfg).loss)
    save_checkpoint(folder / "trained", model.eval(), tokenizer)
    _write_dataset(folder / "dataset", tokenizer, heldout, canaries)
    return TrainedModel(folder / "trained", folder / "untrained", folder / "dataset", losses)


@pytest.fixture(scope="session")
def safety_data() -> Path:
    if not SAFETY_DATA.is_dir():
        pytest.skip(f"the public safety sets are not at {SAFETY_DATA} (../shared/data/safety)")
    return SAFETY_DATA
