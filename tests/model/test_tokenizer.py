import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer

from model.tokenizer import (BOS_ID, PLACEHOLDER_IDS, SPECIAL_TOKENS, MediaPart, Tokenizer,
                             TokenizerError)
from workers.data.sources import python_docs_corpus


def test_round_trips_text_with_special_tokens(tokenizer):
    text = ("<|system|>Be brief.<|end|><|user|>Wie heißt 🐍 in\tPython?\n  def f(x): return x**2"
            "<|end|><|assistant|><|image_start|><|image|><|image_end|>")
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    for tok in ("<|user|>", "<|image|>", "<|end|>"):
        assert SPECIAL_TOKENS.index(tok) in ids  # one id each, not split into bytes


def test_special_ids_are_fixed_and_checked(tokenizer, tmp_path):
    assert tokenizer.encode("x", bos=True)[0] == BOS_ID
    assert PLACEHOLDER_IDS == {"image": 3, "audio": 4, "video": 5}
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    again = Tokenizer.from_file(path)
    assert again.digest() == tokenizer.digest()
    assert again.encode("some text") == tokenizer.encode("some text")
    # a tokenizer without longmix's special tokens at their ids is refused
    renamed = tokenizer.to_str().replace('"<|pad|>"', '"<|nopad|>"')
    with pytest.raises(TokenizerError, match=r"<\|pad\|> to None, longmix expects id 0"):
        Tokenizer(HFTokenizer.from_str(renamed))


def test_vocab_size_and_compression_on_real_text():
    tok = Tokenizer.train(python_docs_corpus(), vocab_size=2048)
    assert tok.vocab_size == 2048
    sample = python_docs_corpus()[0]
    assert len(tok.encode(sample)) < len(sample.encode()) / 2.5  # BPE actually merges


def test_split_digits_gives_one_token_per_digit_and_round_trips():
    text = "The code is 4829173, not 12."
    split = Tokenizer.train(python_docs_corpus(), vocab_size=512, split_digits=True)
    pieces = [split.decode([i]) for i in split.encode(text)]
    assert [p for p in pieces if p.strip().isdigit()] == list("482917312")
    assert split.decode(split.encode(text)) == text


def test_chat_prompt_refuses_unknown_roles(tokenizer):
    prompt = tokenizer.chat_prompt([{"role": "user", "content": "hi"}])
    assert prompt == "<|user|>hi<|end|><|assistant|>"
    with pytest.raises(TokenizerError, match="robot"):
        tokenizer.chat_prompt([{"role": "robot", "content": "hi"}])


def test_video_frames_carry_their_timestamps(tokenizer, tiny_cfg):
    frames = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    even, _ = tokenizer.encode_interleaved([MediaPart("video", frames, fps=2.0)], tiny_cfg)
    given, _ = tokenizer.encode_interleaved(
        [MediaPart("video", frames, timestamps=[0.0, 0.5, 1.0])], tiny_cfg)
    assert given == even
    uneven, _ = tokenizer.encode_interleaved(
        [MediaPart("video", frames, timestamps=[0.0, 2.5, 7.0])], tiny_cfg)
    assert "7.0s" in tokenizer.decode(uneven)
    with pytest.raises(TokenizerError, match="3 frames has 2 timestamps"):
        tokenizer.encode_interleaved([MediaPart("video", frames, timestamps=[0.0, 1.0])], tiny_cfg)
