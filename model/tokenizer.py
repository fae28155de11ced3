"""Byte-level BPE tokenizer (Hugging Face `tokenizers`) with special tokens for modality
boundaries, media placeholders and chat roles, and the interleaved text+media prompt format."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from model.config import ModelConfig
from model.encoders import Media, placeholder_count

# Order fixes the ids (0, 1, 2, ...): the model relies on the placeholder ids.
SPECIAL_TOKENS = [
    "<|pad|>", "<|bos|>", "<|eos|>",
    "<|image|>", "<|audio|>", "<|video|>",  # placeholders: replaced by encoder outputs
    "<|image_start|>", "<|image_end|>", "<|audio_start|>", "<|audio_end|>",
    "<|video_start|>", "<|video_end|>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",
]
SPECIAL_IDS = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
PAD_ID, BOS_ID, EOS_ID = SPECIAL_IDS["<|pad|>"], SPECIAL_IDS["<|bos|>"], SPECIAL_IDS["<|eos|>"]
PLACEHOLDER_IDS = {"image": SPECIAL_IDS["<|image|>"], "audio": SPECIAL_IDS["<|audio|>"],
                   "video": SPECIAL_IDS["<|video|>"]}
# Outputs are text: the model never generates these (media come in, they do not go out).
NEVER_GENERATED_IDS = [SPECIAL_IDS[t] for t in SPECIAL_TOKENS
                       if t in ("<|pad|>", "<|bos|>") or t.startswith(("<|image", "<|audio", "<|video"))]


class TokenizerError(ValueError):
    pass


@dataclass
class MediaPart:
    """A media item inside an interleaved prompt."""

    kind: str  # image | audio | video
    data: torch.Tensor
    fps: float = 1.0  # video only: frames per second, for the text timestamps
    timestamps: Sequence[float] | None = None  # video only: each frame's time in seconds (else i / fps)


class Tokenizer:
    def __init__(self, hf: HFTokenizer):
        for token, expected in SPECIAL_IDS.items():
            if hf.token_to_id(token) != expected:
                raise TokenizerError(f"tokenizer maps {token} to {hf.token_to_id(token)}, "
                                     f"longmix expects id {expected}")
        self.hf = hf

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int,
              split_digits: bool = False) -> "Tokenizer":
        """split_digits: numbers become one token per digit (as Llama's tokenizer splits them)."""
        hf = HFTokenizer(models.BPE())
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     byte_level]) if split_digits else byte_level)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        return cls(HFTokenizer.from_file(str(path)))

    @classmethod
    def from_str(cls, text: str) -> "Tokenizer":
        return cls(HFTokenizer.from_str(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_str(), encoding="utf-8")

    def to_str(self) -> str:
        return self.hf.to_str()

    def digest(self) -> str:
        return hashlib.sha256(self.to_str().encode()).hexdigest()

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str, bos: bool = False) -> list[int]:
        ids = self.hf.encode(text, add_special_tokens=False).ids
        return [BOS_ID, *ids] if bos else ids

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    def encode_interleaved(self, parts: Sequence[str | MediaPart], cfg: ModelConfig,
                           bos: bool = True) -> tuple[list[int], Media]:
        """Text and media in reading order -> token ids with placeholders, and the media.

        image: <|image_start|> <|image|>*n <|image_end|>
        audio: <|audio_start|> <|audio|>*n <|audio_end|>
        video: <|video_start|> "0.0s" <|video|>*n "1.0s" <|video|>*n ... <|video_end|>
        """
        ids = [BOS_ID] if bos else []
        media = Media()
        for part in parts:
            if isinstance(part, str):
                ids += self.encode(part)
                continue
            n = placeholder_count(part.kind, part.data, cfg)
            ids.append(SPECIAL_IDS[f"<|{part.kind}_start|>"])
            if part.kind == "video":
                times = part.timestamps or [i / part.fps for i in range(part.data.shape[0])]
                if len(times) != part.data.shape[0]:
                    raise TokenizerError(f"a video of {part.data.shape[0]} frames has "
                                         f"{len(times)} timestamps")
                for t in times:
                    ids += self.encode(f"{t:.1f}s")
                    ids += [PLACEHOLDER_IDS["video"]] * n
            else:
                ids += [PLACEHOLDER_IDS[part.kind]] * n
            ids.append(SPECIAL_IDS[f"<|{part.kind}_end|>"])
            media.of(part.kind).append(part.data)
        return ids, media

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        """Render text chat messages and open the assistant's turn."""
        out = []
        for m in messages:
            role = m["role"]
            if role not in ("system", "user", "assistant"):
                raise TokenizerError(f"unknown chat role {role!r}")
            out.append(f"<|{role}|>{m['content']}<|end|>")
        return "".join(out) + "<|assistant|>"

