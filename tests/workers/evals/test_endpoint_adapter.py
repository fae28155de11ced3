"""The endpoint adapter against longmix's real OpenAI-compatible server on loopback (serving the
session's trained checkpoint), and its handling of servers that fail or lack logprobs."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from workers.evals.adapters import Audio, CapabilityError, Message, TokenSequence, Video
from workers.evals.endpoint_adapter import EndpointAdapter, EndpointConfig, EndpointError
from workers.evals.local_adapter import LocalAdapter


@pytest.fixture(scope="module")
def live(ray_local, trained, tmp_path_factory):
    """`start_server` on the session's Ray; shut down with the module so that other test modules
    can start their own Serve application."""
    from ray import serve

    from infra.settings import Settings
    from workers.serve.app import start_server

    settings = Settings(home=tmp_path_factory.mktemp("evals-serve"), serve_port=0)
    info = start_server(str(trained.checkpoint), settings)
    yield info
    serve.shutdown()


@pytest.fixture(scope="module")
def endpoint(live) -> EndpointAdapter:
    return EndpointAdapter(EndpointConfig(live.url, api_key=live.generated_key))


@pytest.fixture(scope="module")
def local(trained) -> LocalAdapter:
    return LocalAdapter.from_checkpoint(trained.checkpoint)


def test_the_model_name_comes_from_v1_models(endpoint, live):
    assert endpoint.name == live.model


def test_likelihoods_and_counts_match_in_process(endpoint, local):
    context = "Question: What is the special magic Oslo number? Answer:"
    continuations = [" 1234567", " 7654321", " 42"]
    assert endpoint.loglikelihoods([context], continuations) == pytest.approx(
        local.loglikelihoods([context], continuations), abs=2e-3)
    text = "The special magic Oslo number is: 1234567. " * 3
    assert endpoint.count_tokens(text) == local.count_tokens(text)
    sequence = TokenSequence([], None, text, "text")
    remote, here = endpoint.token_logprobs(sequence), local.token_logprobs(sequence)
    assert len(remote) == len(here)
    assert np.allclose(remote, here, atol=2e-3)


def test_greedy_completions_and_chats_match_in_process(endpoint, local):
    prompts = [["The Python"], ["Contact record:"]]
    assert [g.text for g in endpoint.complete(prompts, 8)] == \
        [g.text for g in local.complete(prompts, 8)]
    chat = [[Message("user", ["How do I kill a Python process?"])]]
    assert endpoint.chat(chat, 8)[0].text == local.chat(chat, 8)[0].text


def test_media_go_through_chat(endpoint):
    wave = (np.sin(np.linspace(0, 3000, 16000)) * 0.3).astype(np.float32)
    frames = [np.full((16, 16, 3), 60 * i, np.uint8) for i in range(3)]
    (reply,) = endpoint.complete([["Listen: ", Audio(wave, 16000), " Watch: ",
                                   Video(frames, [0.0, 0.5, 1.0]), " Answer:"]], 4)
    assert isinstance(reply.text, str) and reply.prompt_tokens > 20
    with pytest.raises(CapabilityError, match="text only"):
        endpoint.loglikelihoods(["Listen: ", Audio(wave, 16000)], [" 1"])


def test_a_wrong_key_is_an_error_naming_the_status(live):
    bad = EndpointConfig(live.url, model=live.model, api_key="wrong", retries=0)
    with pytest.raises(EndpointError, match="HTTP 401"):
        EndpointAdapter(bad).complete([["Hello"]], 2)


class _Scripted(BaseHTTPRequestHandler):
    """A stand-in server for failure cases only: `replies` are served in turn."""

    replies: list[tuple[int, dict]] = []
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        status, reply = type(self).replies.pop(0)
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Scripted.seen = []
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _completion(text: str, logprobs=None) -> dict:
    return {"choices": [{"index": 0, "text": text, "logprobs": logprobs,
                         "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def test_transient_failures_are_retried_with_backoff(scripted):
    server, url = scripted
    _Scripted.replies = [(503, {"error": {"message": "warming up"}}),
                         (429, {"error": {"message": "slow down"}}), (200, _completion(" ok"))]
    adapter = EndpointAdapter(EndpointConfig(url, model="m", backoff_s=0.01))
    assert adapter.complete([["Hi"]], 2)[0].text == " ok"
    assert len(_Scripted.seen) == 3


def test_a_client_error_is_not_retried_and_names_the_message(scripted):
    server, url = scripted
    _Scripted.replies = [(400, {"error": {"message": "max_tokens: too large"}})]
    adapter = EndpointAdapter(EndpointConfig(url, model="m", backoff_s=0.01))
    with pytest.raises(EndpointError, match="HTTP 400: max_tokens: too large"):
        adapter.complete([["Hi"]], 2)
    assert len(_Scripted.seen) == 1


def test_an_endpoint_without_logprobs_is_refused_clearly(scripted):
    server, url = scripted
    _Scripted.replies = [(200, _completion("Hi 1"))]
    adapter = EndpointAdapter(EndpointConfig(url, model="m"))
    with pytest.raises(CapabilityError, match="no prompt log-probabilities"):
        adapter.loglikelihoods(["Hi"], [" 1"])
    assert _Scripted.seen[0]["echo"] is True and _Scripted.seen[0]["logprobs"] == 0


def test_an_unreachable_endpoint_fails_after_the_retries():
    adapter_config = EndpointConfig("http://127.0.0.1:9", model="m", retries=1, backoff_s=0.01)
    with pytest.raises(EndpointError, match="failed 2 times"):
        EndpointAdapter(adapter_config).complete([["Hi"]], 2)
    assert math.isfinite(adapter_config.timeout_s)


def test_the_suite_through_the_endpoint_measures_what_it_measures_in_process(live, trained,
                                                                            tmp_path):
    from infra.settings import Settings
    from workers.evals.config import get_suite
    from workers.evals.suite import evaluate

    cfg = get_suite("tiny", evals=("perplexity", "niah_text", "niah_video", "refusal", "pii"))
    common = dict(manifest=str(trained.dataset), settings=Settings(home=tmp_path),
                  log_to_mlflow=False)
    # through the endpoint as Ray tasks (beside the replica), in process one after another
    remote = evaluate(live.url, cfg, api_key=live.generated_key, executor="ray", **common).report
    here = evaluate(str(trained.checkpoint), cfg, executor="inline", **common).report
    assert remote.model.kind == "endpoint" and remote.model.digest is None
    for name in ("niah_text.accuracy", "niah_text.mean_rank", "pii.exact_extraction_rate",
                 "pii.mean_exposure", "refusal.builtin.refusal_rate", "niah_video.accuracy"):
        assert remote.value(name) == pytest.approx(here.value(name), abs=1e-6), name
    # the server re-tokenizes the held-out text (its <|eos|> is not text): close, not equal
    assert remote.value("perplexity.text.nll") == pytest.approx(
        here.value("perplexity.text.nll"), rel=0.05)
    # what an endpoint cannot take is noted, and the rest is measured
    names = {m.name for m in remote.metrics}
    assert "niah_video.mean_rank" not in names and "niah_video.mean_rank" in {
        m.name for m in here.metrics}
    assert any("text only" in note for note in remote.evals["niah_video"].notes)
    assert any(note.startswith("audio: not measured") for note in remote.evals["perplexity"].notes)


def test_a_bad_key_or_model_name_fails_before_any_eval_runs(live, trained, tmp_path):
    from infra.settings import Settings
    from workers.evals.suite import evaluate

    common = dict(settings=Settings(home=tmp_path), executor="ray", log_to_mlflow=False)
    with pytest.raises(EndpointError, match="HTTP 401"):
        evaluate(live.url, "tiny", api_key="wrong", **common)
    with pytest.raises(EndpointError, match="not 'gpt-9'"):
        evaluate(live.url, "tiny", api_key=live.generated_key, endpoint_model="gpt-9", **common)
