import pytest

from model.tokenizer import EOS_ID
from workers.data.pack import pack_documents, split_of


def test_packing_keeps_every_token_in_order_with_its_document():
    docs = [[10, 11, 12], [20, 21], [30, 31, 32, 33, 34]]
    packed = pack_documents(docs, seq_len=4)  # rows of 5
    stream = [10, 11, 12, EOS_ID, 20, 21, EOS_ID, 30, 31, 32, 33, 34, EOS_ID]
    assert packed.tokens.tolist() == [stream[:5], stream[5:10]]
    assert packed.doc_ids.tolist() == [[0, 0, 0, 0, 1], [1, 1, 2, 2, 2]]
    assert packed.num_tokens == 10


def test_too_little_text_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot fill one sequence"):
        pack_documents([[1, 2]], seq_len=8)


def test_split_is_stable_and_roughly_proportional():
    texts = [f"document number {i}" for i in range(2000)]
    splits = [split_of(t) for t in texts]
    assert splits == [split_of(t) for t in texts]
    share = splits.count("validation") / len(splits)
    assert 0.03 < share < 0.07
