"""The smoke evaluation a candidate version must pass through its live OpenAI API before it takes
traffic: it serves the approved digest, completions return text, prompt log-probabilities are
finite and at most 0, and a one-cell needle-in-a-haystack runs. Each check says why it passed or
failed; `require_niah_found` and `max_probe_nll` turn the last two into quality bars."""

from __future__ import annotations

import math
import time

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from workers.data.needles import draw_needle, needle_sentence
from workers.data.sources import python_docs_corpus
from workers.evals.adapters import TokenSequence
from workers.evals.endpoint_adapter import EndpointAdapter, EndpointConfig
from workers.evals.haystack import (chars_per_token, found, haystack, insert_at_depths,
                                    question_prompt)
from workers.evals.long_context import overhead

PROMPTS = ("def fibonacci(n):", "The quick brown fox", "import os\n", "Dear reviewer,")
PROBE = ("The Python language reference describes the syntax and the core semantics of the "
         "language; the library reference describes the standard library.")


class SmokeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    completions: int = Field(3, ge=1)  # plain completions: all answered, text in at least one
    max_tokens: int = Field(8, ge=1)
    logprobs: bool = True  # the prompt log-probability check (echo + logprobs)
    niah_tokens: int = Field(256, ge=64)  # the needle-in-a-haystack cell: context length
    niah_depth: float = Field(0.5, ge=0.0, le=1.0)  # ... and depth
    answer_tokens: int = Field(12, ge=1)
    seed: int = 0
    require_niah_found: bool = False  # the needle must be found (a trained model)
    max_probe_nll: float | None = Field(None, gt=0)  # mean NLL of the probe text at most this
    timeout_s: float = Field(60.0, gt=0)  # per request


class SmokeCheck(BaseModel):
    name: str
    passed: bool
    reason: str


class SmokeResult(BaseModel):
    base_url: str
    checks: list[SmokeCheck]
    seconds: float

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[SmokeCheck]:
        return [c for c in self.checks if not c.passed]


def smoke_check(base_url: str, api_key: str, expected_digest: str,
                cfg: SmokeConfig | None = None) -> SmokeResult:
    cfg = cfg or SmokeConfig()
    start = time.monotonic()
    checks = [_run("ready", lambda: _ready(base_url, expected_digest, cfg))]
    try:
        adapter = EndpointAdapter(EndpointConfig(base_url, api_key=api_key,
                                                 timeout_s=cfg.timeout_s, retries=1))
    except Exception as e:  # unreachable, or the key refused: nothing else can run
        checks.append(SmokeCheck(name="models", passed=False, reason=str(e)))
        return SmokeResult(base_url=base_url, checks=checks, seconds=time.monotonic() - start)
    checks.append(SmokeCheck(name="models", passed=True, reason=f"serves {adapter.name!r}"))
    checks.append(_run("completions", lambda: _completions(adapter, cfg)))
    if cfg.logprobs:
        checks.append(_run("logprobs", lambda: _logprobs(adapter, cfg)))
    checks.append(_run("niah", lambda: _niah(adapter, cfg)))
    return SmokeResult(base_url=base_url, checks=checks, seconds=time.monotonic() - start)


def _run(name: str, check) -> SmokeCheck:
    """A check's (passed, reason), or its error as the reason of a failure."""
    try:
        passed, reason = check()
    except Exception as e:  # any failure of the endpoint is a failed check, with its message
        passed, reason = False, f"{type(e).__name__}: {e}"
    return SmokeCheck(name=name, passed=passed, reason=reason)


def _ready(base_url: str, expected_digest: str,
           cfg: SmokeConfig) -> tuple[bool, str]:
    reply = httpx.get(f"{base_url.rstrip('/')}/readyz", timeout=cfg.timeout_s)  # open: no key
    if reply.status_code != 200:
        return False, f"/readyz answered {reply.status_code}"
    digest = reply.json().get("digest")
    if digest != expected_digest:
        return False, f"serves digest {str(digest)[:12]}…, not the approved {expected_digest[:12]}…"
    return True, f"ready, serving the approved digest {digest[:12]}…"


def _completions(adapter: EndpointAdapter, cfg: SmokeConfig) -> tuple[bool, str]:
    prompts = [[PROMPTS[i % len(PROMPTS)]] for i in range(cfg.completions)]
    answers = adapter.complete(prompts, cfg.max_tokens)
    # an instruction-tuned model may end a plain completion at once (its end-of-turn token):
    # that is an answer; an endpoint that returns no text for any prompt is not working
    with_text = sum(bool(a.text) for a in answers)
    return with_text > 0, f"{len(prompts)} answered, {with_text} with text"


def _logprobs(adapter: EndpointAdapter, cfg: SmokeConfig) -> tuple[bool, str]:
    values = adapter.token_logprobs(TokenSequence([], None, PROBE, "text"))
    bad = [v for v in values if not (math.isfinite(v) and v <= 0.0)]
    if not values or bad:
        return False, f"{len(bad)} of {len(values)} prompt log-probabilities not finite and <= 0"
    nll = -float(np.mean(values))
    reason = f"{len(values)} prompt tokens, mean NLL {nll:.3f}"
    if cfg.max_probe_nll is not None and nll > cfg.max_probe_nll:
        return False, f"{reason} > max {cfg.max_probe_nll}"
    return True, reason


def _niah(adapter: EndpointAdapter, cfg: SmokeConfig) -> tuple[bool, str]:
    """One needle at one depth of one context length, in the evals' protocol (workers/evals)."""
    rng = np.random.default_rng(cfg.seed)
    texts = python_docs_corpus()
    city, number = draw_needle(rng)
    needle, question = needle_sentence(city, number), question_prompt(city)
    room = cfg.niah_tokens - overhead(adapter, [needle], question)
    text = haystack(adapter, texts, room, chars_per_token(adapter, texts), rng)
    prompt = insert_at_depths(text, [needle], [cfg.niah_depth]) + question
    answer = adapter.complete([[prompt]], cfg.answer_tokens)[0].text
    hit = found(number, answer)
    reason = (f"{cfg.niah_tokens} tokens, depth {cfg.niah_depth}: needle "
              f"{'found' if hit else 'not found'} (answer {answer[:40]!r})")
    return hit or not cfg.require_niah_found, reason
