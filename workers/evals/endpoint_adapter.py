"""Any OpenAI-compatible endpoint as the evaluated model: /v1/completions for plain prompts and
(with echo and logprobs) likelihoods, /v1/chat/completions for chats with audio and video.

Transient failures (connection errors, timeouts, 429 and 5xx) are retried with exponential
backoff; any other error, and a reply that lacks what an eval needs, raise at once and say so.
"""

from __future__ import annotations

import base64
import io
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import numpy as np
from PIL import Image
from scipy.io import wavfile

from workers.evals.adapters import (Audio, CapabilityError, Generated, Message, Part,
                                    TokenSequence, Video, text_only)

MAX_PROMPTS_PER_REQUEST = 16
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class EndpointError(RuntimeError):
    """The endpoint refused a request or stayed unreachable after the retries."""


@dataclass(frozen=True)
class EndpointConfig:
    base_url: str  # http://host:port (with or without /v1)
    model: str | None = None  # None: the first of /v1/models
    api_key: str | None = None
    timeout_s: float = 120.0
    retries: int = 4
    backoff_s: float = 0.5  # first wait; doubles each retry
    concurrency: int = 4  # chat requests in flight (the server batches them)


class EndpointAdapter:
    digest = None  # an endpoint does not say which weights it serves

    def __init__(self, config: EndpointConfig):
        self.config = config
        base = config.base_url.rstrip("/")
        self.base = base if base.endswith("/v1") else f"{base}/v1"
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self.http = httpx.Client(timeout=config.timeout_s, headers=headers)
        self.name = config.model or self._first_model()

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        url = f"{self.base}{path}"
        wait = self.config.backoff_s
        for attempt in range(self.config.retries + 1):
            try:
                reply = self.http.request(method, url, json=body)
            except httpx.TransportError as e:
                failure = f"{type(e).__name__}: {e}"
            else:
                if reply.status_code < 400:
                    return reply.json()
                failure = f"HTTP {reply.status_code}: {_error_message(reply)}"
                if reply.status_code not in RETRY_STATUS:
                    raise EndpointError(f"{method} {url} refused: {failure}")
            if attempt < self.config.retries:
                time.sleep(wait)
                wait *= 2
        raise EndpointError(f"{method} {url} failed {self.config.retries + 1} times; "
                            f"last: {failure}")

    def _served(self) -> list[str]:
        return [m["id"] for m in self._request("GET", "/models").get("data") or []]

    def _first_model(self) -> str:
        served = self._served()
        if not served:
            raise EndpointError(f"{self.base}/models lists no model; pass the model name")
        return served[0]

    def check(self) -> None:
        """Reachable, the key accepted, and serving the model asked for (/v1/models)."""
        served = self._served()
        if self.name not in served:
            raise EndpointError(f"{self.base} serves {served}, not {self.name!r}")

    # --- generation ----------------------------------------------------------------------

    def complete(self, prompts: list[list[Part]], max_tokens: int) -> list[Generated]:
        if any(not isinstance(p, str) for prompt in prompts for p in prompt):
            # an OpenAI endpoint takes media only in chats: each such prompt is one user turn
            return self.chat([[Message("user", prompt)] for prompt in prompts], max_tokens)
        texts = [text_only(p, "/v1/completions") for p in prompts]
        out: list[Generated] = []
        for start in range(0, len(texts), MAX_PROMPTS_PER_REQUEST):
            batch = texts[start:start + MAX_PROMPTS_PER_REQUEST]
            reply = self._request("POST", "/completions", {
                "model": self.name, "prompt": batch, "max_tokens": max_tokens, "temperature": 0.0})
            choices = sorted(reply["choices"], key=lambda c: c["index"])
            out += [Generated(c["text"]) for c in choices]
        return out

    def chat(self, conversations: list[list[Message]], max_tokens: int) -> list[Generated]:
        def one(messages: list[Message]) -> Generated:
            reply = self._request("POST", "/chat/completions", {
                "model": self.name, "max_tokens": max_tokens, "temperature": 0.0,
                "messages": [{"role": m.role, "content": [_content_part(p) for p in m.content]}
                             for m in messages]})
            usage = reply.get("usage") or {}
            return Generated(reply["choices"][0]["message"]["content"] or "",
                             usage.get("prompt_tokens", 0))

        with ThreadPoolExecutor(self.config.concurrency) as pool:
            return list(pool.map(one, conversations))

    # --- likelihoods ---------------------------------------------------------------------

    def _echo(self, prompts: list[str]) -> list[list[tuple[int, float | None]]]:
        """Each prompt's echoed tokens as (offset in the prompt, log-probability).

        Offsets count from the start of the prompt: a server that echoes a prefix first (longmix
        shows its <|bos|>) has its offsets shifted back, and tokens before the prompt dropped.
        """
        out = []
        for start in range(0, len(prompts), MAX_PROMPTS_PER_REQUEST):
            batch = prompts[start:start + MAX_PROMPTS_PER_REQUEST]
            reply = self._request("POST", "/completions", {
                "model": self.name, "prompt": batch, "max_tokens": 1, "temperature": 0.0,
                "echo": True, "logprobs": 0})
            choices = sorted(reply["choices"], key=lambda c: c["index"])
            for prompt, choice in zip(batch, choices):
                logprobs = choice.get("logprobs") or {}
                if not logprobs.get("token_logprobs") or not logprobs.get("text_offset"):
                    raise CapabilityError(
                        f"{self.base}/completions returned no prompt log-probabilities "
                        "(echo with logprobs): likelihood evals need them")
                shift = choice["text"].find(prompt)
                if shift < 0:
                    raise CapabilityError(f"{self.base}/completions did not echo the prompt")
                out.append([(off - shift, lp) for off, lp in
                            zip(logprobs["text_offset"], logprobs["token_logprobs"])
                            if off >= shift])
        return out

    def loglikelihoods(self, context: list[Part], continuations: list[str]) -> list[float]:
        text = text_only(context, "/v1/completions (likelihoods)")
        totals = []
        for cont, tokens in zip(continuations, self._echo([text + c for c in continuations])):
            end = len(text) + len(cont)  # the generated token starts at or after this
            picked = [lp for off, lp in tokens if len(text) <= off < end]
            if not picked or any(lp is None for lp in picked):
                raise CapabilityError(f"{self.base}/completions gave no log-probability for the "
                                      f"continuation {cont!r}")
            totals.append(float(sum(picked)))
        return totals

    def token_logprobs(self, sequence: TokenSequence) -> list[float]:
        if sequence.modality != "text":
            raise CapabilityError(f"/v1/completions scores text only; this sequence is "
                                  f"{sequence.modality}")
        tokens = self._echo([sequence.text])[0]
        values = [lp for off, lp in tokens if off < len(sequence.text)]
        while values and values[0] is None:  # the first token (without a <|bos|>) has none
            values.pop(0)
        return [math.nan if lp is None else float(lp) for lp in values]

    def count_tokens(self, text: str) -> int:
        reply = self._request("POST", "/completions", {
            "model": self.name, "prompt": text, "max_tokens": 1, "temperature": 0.0})
        usage = reply.get("usage") or {}
        if "prompt_tokens" not in usage:
            raise CapabilityError(f"{self.base}/completions reports no usage.prompt_tokens")
        return int(usage["prompt_tokens"])


def _error_message(reply: httpx.Response) -> str:
    try:
        return str(reply.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return reply.text[:300]


def _png_data_url(frame: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _wav_base64(audio: Audio) -> str:
    buffer = io.BytesIO()
    pcm = (np.clip(audio.wave, -1.0, 1.0) * 32767).astype(np.int16)
    wavfile.write(buffer, audio.sample_rate, pcm)
    return base64.b64encode(buffer.getvalue()).decode()


def _content_part(part: Part) -> dict:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if isinstance(part, Audio):
        return {"type": "input_audio", "input_audio": {"data": _wav_base64(part), "format": "wav"}}
    if isinstance(part, Video):  # longmix's video part: frames with their timestamps
        return {"type": "video", "video": [{"image_url": {"url": _png_data_url(f)}, "timestamp": t}
                                           for f, t in zip(part.frames, part.timestamps)]}
    raise TypeError(f"unknown prompt part {type(part).__name__}")
