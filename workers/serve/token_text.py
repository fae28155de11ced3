"""Each vocabulary entry's text and raw bytes, for log-probability listings."""

from __future__ import annotations

import codecs

from model.tokenizer import Tokenizer


def _byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's): printable stand-in character -> the byte it encodes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = chr(256 + extra), extra + 1
    return {c: b for b, c in chars.items()}


class TokenText:
    def __init__(self, tokenizer: Tokenizer):
        alphabet = _byte_level_alphabet()
        self.strings: list[str] = []
        self.bytes: list[list[int]] = []
        self.special: set[int] = set()
        for i in range(tokenizer.vocab_size):
            piece = tokenizer.hf.id_to_token(i) or ""
            self.strings.append(tokenizer.decode([i]))
            if all(c in alphabet for c in piece):
                self.bytes.append([alphabet[c] for c in piece])
            else:  # special tokens are whole strings, not byte pieces
                self.bytes.append(list(piece.encode()))
                self.special.add(i)

    def tokens(self, ids: list[int]) -> list[str]:
        return [self.strings[i] for i in ids]

    def named(self, top: dict[int, float] | None) -> dict[str, float] | None:
        return None if top is None else {self.strings[i]: lp for i, lp in top.items()}

    def offsets(self, ids: list[int]) -> list[int]:
        """Where each token's text starts in the decoded text of all of them, in characters. A
        multi-byte character split across byte-level pieces ("“" as two tokens) is one character
        of the text, counted at the piece that completes it: each piece decoded alone would count
        a replacement character, and every offset after it would drift."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out, at = [], 0
        for i in ids:
            out.append(at)
            at += len(self.strings[i]) if i in self.special \
                else len(decoder.decode(bytes(self.bytes[i])))
        return out
