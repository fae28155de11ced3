import numpy as np
import pytest

from model.tokenizer import EOS_ID, PAD_ID, PLACEHOLDER_IDS, SPECIAL_IDS
from workers.data.pack import Packer, PackedSequences, TokenizedDoc, loss_mask_for, pack_documents
from workers.data.records import MediaItem


def _doc(ids, media=()):
    arr = np.array(ids, dtype=np.int32)
    return TokenizedDoc(arr, loss_mask_for(arr, chat=False), list(media))


def _documents(rows) -> list[list[int]]:
    """The pieces of documents each row holds, by doc_id."""
    pieces = []
    for row in rows:
        ids, docs = row["tokens"].tolist(), row["doc_ids"].tolist()
        pieces += [[t for t, d in zip(ids, docs) if d == doc] for doc in sorted(set(docs) - {-1})]
    return pieces


def test_a_document_that_fits_in_a_row_is_never_split():
    rng = np.random.default_rng(0)
    docs = [list(range(100 * i, 100 * i + int(n))) + [EOS_ID]
            for i, n in enumerate(rng.integers(2, 30, 2000))]
    packed = pack_documents([d[:-1] for d in docs], seq_len=31)  # rows of 32
    rows = [{"tokens": t, "doc_ids": d} for t, d in zip(packed.tokens, packed.doc_ids)]
    assert sorted(_documents(rows)) == sorted(docs)  # every document whole, in one row
    padding = (packed.tokens == PAD_ID).sum().item() / packed.tokens.numel()
    assert padding < 0.05, padding  # best fit leaves little room unused


def test_a_document_longer_than_a_row_fills_whole_rows_then_its_tail_is_packed():
    packer = Packer(seq_len=4, open_rows=2)  # rows of 5
    packer.add(_doc([31, 32, 33]))
    packer.add(_doc([10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]))  # 2 rows and a tail of 2
    packer.flush()
    assert [r["tokens"].tolist() for r in packer.rows] == [
        [10, 11, 12, 13, 14], [15, 16, 17, 18, 19], [31, 32, 33, 20, 21]]
    assert packer.rows[2]["doc_ids"].tolist() == [0, 0, 0, 1, 1]  # the tail: its own document
    assert packer.rows[2]["loss_mask"].tolist() == [1, 1, 1, 1, 1]


def test_the_fullest_row_is_closed_when_no_open_row_holds_a_document():
    packer = Packer(seq_len=9, open_rows=2)  # rows of 10
    # 5 fits neither open row (7, 6): the fullest is closed; 3 fits both: the fuller takes it
    for n in (7, 6, 5, 3):
        packer.add(_doc(list(range(n))))
    packer.flush()
    assert [int((r["doc_ids"] >= 0).sum()) for r in packer.rows] == [7, 9, 5]


def test_a_document_with_media_never_splits_across_rows():
    image = MediaItem("image", np.zeros((3, 8, 8), dtype=np.uint8))
    img = PLACEHOLDER_IDS["image"]
    packer = Packer(seq_len=7)  # rows of 8
    packer.add(_doc([1, 2, 3, 4, 5]))
    packer.add(_doc([6, img, img, img, 7], [image]))  # 5 tokens do not fit in the 3 left
    packer.add(_doc([8, 9, 10, 11, 12]))
    packer.flush()
    rows = packer.rows
    assert rows[0]["tokens"].tolist() == [1, 2, 3, 4, 5, PAD_ID, PAD_ID, PAD_ID]
    assert rows[0]["media_kinds"] == [] and rows[1]["media_kinds"] == ["image"]
    assert rows[1]["tokens"].tolist() == [6, img, img, img, 7, PAD_ID, PAD_ID, PAD_ID]
    assert rows[1]["loss_mask"].tolist() == [1, 0, 0, 0, 1, 0, 0, 0]  # placeholders not targets
    assert rows[1]["media_shapes"] == [[3, 8, 8]]
    assert rows[2]["tokens"].tolist()[:5] == [8, 9, 10, 11, 12]
    with pytest.raises(ValueError, match="needs 9 tokens; rows hold 8"):
        packer.add(_doc([img] * 9, [image]))


def test_chat_loss_mask_covers_only_the_assistant_turns():
    s = SPECIAL_IDS
    ids = np.array([s["<|user|>"], 50, s["<|end|>"], s["<|assistant|>"], 60, 61, s["<|end|>"],
                    s["<|user|>"], 70, s["<|end|>"], s["<|assistant|>"], 80, s["<|end|>"], EOS_ID])
    assert loss_mask_for(ids, chat=True).tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1]
    assert loss_mask_for(ids, chat=False).all()


def test_table_round_trips_to_tensors():
    packer = Packer(seq_len=3)
    packer.add(_doc([5, 6, 7, 8, 9, 10, EOS_ID]))
    packer.flush()
    table = packer.table()
    assert table.num_rows == 2 and table.schema.field("tokens").type.value_type.bit_width == 32
    packed = PackedSequences.from_table(table)
    assert packed.tokens.tolist() == [[5, 6, 7, 8], [9, 10, EOS_ID, PAD_ID]]
    assert packed.loss_mask.tolist()[1] == [True, True, True, False]


def test_too_little_text_is_a_clear_error():
    with pytest.raises(ValueError, match="no tokens to pack"):
        pack_documents([], seq_len=8)
