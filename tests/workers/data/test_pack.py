import numpy as np
import pytest

from model.tokenizer import EOS_ID, PAD_ID, PLACEHOLDER_IDS, SPECIAL_IDS
from workers.data.pack import Packer, PackedSequences, TokenizedDoc, loss_mask_for, pack_documents
from workers.data.records import MediaItem


def test_packing_keeps_every_token_in_order_with_its_document():
    docs = [[10, 11, 12], [20, 21], [30, 31, 32, 33, 34]]
    packed = pack_documents(docs, seq_len=4)  # rows of 5
    stream = [10, 11, 12, EOS_ID, 20, 21, EOS_ID, 30, 31, 32, 33, 34, EOS_ID]
    assert packed.tokens.tolist() == [stream[:5], stream[5:10], stream[10:] + [PAD_ID, PAD_ID]]
    assert packed.doc_ids.tolist() == [[0, 0, 0, 0, 1], [0, 0, 1, 1, 1], [0, 0, 0, -1, -1]]
    assert packed.loss_mask.tolist()[2] == [True, True, True, False, False]


def _doc(ids, media=()):
    arr = np.array(ids, dtype=np.int32)
    return TokenizedDoc(arr, loss_mask_for(arr, chat=False), list(media))


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
    assert rows[1]["tokens"].tolist() == [6, img, img, img, 7, 8, 9, 10]
    assert rows[1]["loss_mask"].tolist() == [1, 0, 0, 0, 1, 1, 1, 1]  # placeholders not targets
    assert rows[1]["media_shapes"] == [[3, 8, 8]]
    assert rows[2]["doc_ids"].tolist()[:2] == [0, 0]
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
