"""Token texts and offsets, as the completions endpoint lists them with echo and logprobs."""

from workers.serve.token_text import TokenText

TEXT = "A descriptor is an attribute with “binding behavior”: één ✓ done."


def test_offsets_count_a_character_split_across_tokens_once(tokenizer):
    """Byte-level pieces of one multi-byte character ("“") decode alone to replacement
    characters; the offsets must still be where each token starts in the decoded text, or a
    client picking a continuation's tokens by offset scores the wrong ones."""
    ids = tokenizer.encode(TEXT, bos=True)
    offsets = TokenText(tokenizer).offsets(ids)
    text = tokenizer.decode(ids)
    assert text.endswith(TEXT) and offsets[0] == 0
    for i in range(1, len(ids)):
        prefix = tokenizer.decode(ids[:i])
        if "\ufffd" not in prefix:  # a prefix ending inside a character has no exact length
            assert offsets[i] == len(prefix), (i, prefix)
    assert len(set(offsets)) < len(ids)  # some character did span tokens: the case is exercised
