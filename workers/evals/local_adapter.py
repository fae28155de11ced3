"""A checkpoint evaluated in this process: generation batched across prompts (each with its own
KV cache, decoded together, as the serving engine does), and log-likelihoods of many
continuations of one context from a single prefill of that context."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from model.attention import KVCache
from model.batch_decode import decode_step
from model.checkpoint import checkpoint_digest, load_checkpoint
from model.encoders import Media, audio_features
from model.generate import SamplingParams, prefill
from model.sequence import Sequence, SequenceRequest
from model.tokenizer import PLACEHOLDER_IDS, MediaPart, Tokenizer
from model.transformer import Transformer
from workers.data.media import fit_image, resample
from workers.evals.adapters import (Audio, CapabilityError, Generated, Message, Part,
                                    TokenSequence, Video)


class LocalAdapter:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, name: str,
                 digest: str | None = None, batch_size: int = 8):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name, self.digest = name, digest
        self.batch_size = batch_size
        self.cfg = model.cfg

    @classmethod
    def from_checkpoint(cls, folder: str | Path, batch_size: int = 8) -> "LocalAdapter":
        digest = checkpoint_digest(folder)  # every file verified before loading
        model, tokenizer = load_checkpoint(folder)
        return cls(model, tokenizer, Path(folder).name, digest, batch_size)

    # --- prompts -> token ids and media --------------------------------------------------

    def _media_part(self, part: Audio | Video) -> MediaPart:
        if isinstance(part, Audio):
            wave = resample(part.wave, part.sample_rate, self.cfg.audio_sample_rate)
            return MediaPart("audio", audio_features(torch.from_numpy(wave), self.cfg))
        # square frames, a multiple of the pooled patch, no larger than the encoder's grid
        step = self.cfg.image_patch_size * self.cfg.video_pool
        largest = self.cfg.image_patch_size * self.cfg.image_max_patches_per_side
        side = max(min(part.frames[0].shape[0], largest) // step * step, step)
        frames = np.stack([fit_image(f, side) for f in part.frames])  # (F, 3, S, S)
        return MediaPart("video", torch.from_numpy(frames), timestamps=list(part.timestamps))

    def encode(self, parts: list[Part]) -> tuple[list[int], Media]:
        converted = [p if isinstance(p, str) else self._media_part(p) for p in parts]
        return self.tokenizer.encode_interleaved(converted, self.cfg, bos=True)

    def chat_parts(self, messages: list[Message]) -> list[Part]:
        """The chat format of model/tokenizer.py chat_prompt, media where they stand."""
        parts: list[Part] = []
        for m in messages:
            parts += [f"<|{m.role}|>", *m.content, "<|end|>"]
        return [*parts, "<|assistant|>"]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, bos=True))

    # --- generation ----------------------------------------------------------------------

    def complete(self, prompts: list[list[Part]], max_tokens: int) -> list[Generated]:
        return self._generate([self.encode(p) for p in prompts], max_tokens)

    def chat(self, conversations: list[list[Message]], max_tokens: int) -> list[Generated]:
        return self._generate([self.encode(self.chat_parts(c)) for c in conversations], max_tokens)

    @torch.no_grad()
    def _generate(self, encoded: list[tuple[list[int], Media]], max_tokens: int) -> list[Generated]:
        out: list[Generated] = []
        for start in range(0, len(encoded), self.batch_size):
            out += self._generate_batch(encoded[start:start + self.batch_size], max_tokens)
        return out

    def _generate_batch(self, encoded, max_tokens: int) -> list[Generated]:
        sequences = []
        for ids, media in encoded:
            room = self.cfg.max_seq_len - len(ids)
            if room < 1:
                raise ValueError(f"a prompt of {len(ids)} tokens fills the model's context of "
                                 f"{self.cfg.max_seq_len}")
            request = SequenceRequest(ids, SamplingParams(max_new_tokens=min(max_tokens, room)),
                                      media)
            sequence = Sequence(request, next(self.model.parameters()).device)
            sequence.prefill(self.model)
            sequences.append(sequence)
        going = [s for s in sequences if s.finish_reason is None]
        while going:
            for s in going:
                s.sample(self.tokenizer)
            going = [s for s in going if s.finish_reason is None]
            if going:
                logits = decode_step(self.model, [s.last_token for s in going],
                                     [s.cache for s in going])  # (B, V)
                for row, s in enumerate(going):
                    s.logits = logits[row:row + 1]
        return [Generated(s.result(self.tokenizer).text, len(s.request.prompt_ids))
                for s in sequences]

    # --- likelihoods ---------------------------------------------------------------------

    @torch.no_grad()
    def loglikelihoods(self, context: list[Part], continuations: list[str]) -> list[float]:
        """One prefill of the context; then every continuation in one batch over copies of its
        KV cache (right-padded: padding comes after each row's tokens, so it changes nothing)."""
        ids, media = self.encode(context)
        conts = [self.tokenizer.encode(c) for c in continuations]
        if any(not c for c in conts):
            raise ValueError("an empty continuation has no likelihood")
        longest = max(len(c) for c in conts)
        if len(ids) + longest > self.cfg.max_seq_len:
            raise ValueError(f"context of {len(ids)} tokens + a continuation of {longest} exceeds "
                             f"the model's context of {self.cfg.max_seq_len}")
        device = next(self.model.parameters()).device
        weight = next(self.model.parameters())
        single = KVCache(self.cfg, 1, len(ids), dtype=weight.dtype, device=device)
        ids_t = torch.tensor([ids], device=device)  # (1, T)
        last = prefill(self.model, ids_t, single, SamplingParams().prefill_chunk, media)  # (1, V)
        batch = KVCache(self.cfg, len(conts), len(ids) + longest, dtype=weight.dtype, device=device)
        for layer in range(self.cfg.n_layers):
            batch.keys[layer][:, :, :len(ids)] = single.keys[layer]
            batch.values[layer][:, :, :len(ids)] = single.values[layer]
        batch.advance(len(ids))
        tokens = torch.tensor([c + [0] * (longest - len(c)) for c in conts], device=device)
        logits = self.model(tokens[:, :-1], cache=batch).logits if longest > 1 else None
        first = last.log_softmax(-1)[0, tokens[:, 0]]  # (B,) the first token, from the context
        totals = first.clone()
        if logits is not None:
            rest = logits.log_softmax(-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)  # (B, L-1)
            lengths = torch.tensor([len(c) for c in conts], device=device)
            keep = torch.arange(1, longest, device=device)[None, :] < lengths[:, None]
            totals += (rest * keep).sum(-1)
        return totals.tolist()

    @torch.no_grad()
    def token_logprobs(self, sequence: TokenSequence) -> list[float]:
        ids, media = sequence.ids, sequence.media
        if not ids or sequence.tokenizer_digest != self.tokenizer.digest():
            if sequence.modality != "text":
                raise CapabilityError(f"a {sequence.modality} sequence tokenized by another "
                                      "tokenizer cannot be re-tokenized from its text")
            ids, media = self.tokenizer.encode(sequence.text, bos=True), None
        if len(ids) > self.cfg.max_seq_len:
            if sequence.modality != "text":
                raise ValueError(f"a {sequence.modality} sequence of {len(ids)} tokens exceeds "
                                 f"the model's context of {self.cfg.max_seq_len}")
            ids = ids[:self.cfg.max_seq_len]
        x = torch.tensor([ids], device=next(self.model.parameters()).device)
        logp = self.model(x, media).logits[0, :-1].log_softmax(-1)  # (T-1, V)
        chosen = logp.gather(-1, x[0, 1:, None]).squeeze(-1)
        placeholder = torch.isin(x[0, 1:], torch.tensor(list(PLACEHOLDER_IDS.values())))
        return chosen.masked_fill(placeholder, math.nan).tolist()
