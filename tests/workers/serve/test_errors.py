"""Every bad input gets a 4xx with an OpenAI-style error object naming the problem, the server
keeps serving, and the API key is required and never written to the logs."""

import base64
import io
import wave
from pathlib import Path

import httpx
import pytest
from PIL import Image

from workers.serve.media import MAX_IMAGE_PIXELS
from workers.serve.schemas import MAX_VIDEO_FRAMES

CONTEXT = 512  # the tiny preset's


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as client:
        yield client


def completion(server, **fields):
    return {"model": server.model, "prompt": "def f(", "max_tokens": 2, **fields}


def chat_with(server, part):
    return {"model": server.model, "max_tokens": 2,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "see"}, part]}]}


def image_part(url):
    return {"type": "image_url", "image_url": {"url": url}}


def png_url(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")  # black: compresses to little
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def wav_part(rate: int) -> dict:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(b"\0\0" * rate)
    return {"type": "input_audio", "input_audio": {
        "data": base64.b64encode(buffer.getvalue()).decode(), "format": "wav"}}


BAD_REQUESTS = {
    "prompt longer than the context": (
        "/v1/completions", lambda s: completion(s, prompt=[20] * (CONTEXT + 1)), 400,
        "prompt", "context_length_exceeded"),
    "prompt plus max_tokens beyond the context": (
        "/v1/completions", lambda s: completion(s, prompt=[20] * 500, max_tokens=20), 400,
        "prompt", "context_length_exceeded"),
    "max_tokens beyond the context": (
        "/v1/completions", lambda s: completion(s, max_tokens=CONTEXT), 400, "max_tokens",
        "invalid_value"),
    "negative max_tokens": (
        "/v1/completions", lambda s: completion(s, max_tokens=-1), 400, "max_tokens",
        "invalid_value"),
    "max_tokens as a string": (
        "/v1/completions", lambda s: completion(s, max_tokens="5"), 400, "max_tokens",
        "invalid_value"),
    "temperature of the wrong type": (
        "/v1/completions", lambda s: completion(s, temperature="hot"), 400, "temperature",
        "invalid_value"),
    "prompt of the wrong type": (
        "/v1/completions", lambda s: completion(s, prompt={"text": "x"}), 400, "prompt",
        "invalid_value"),
    "token id outside the vocabulary": (
        "/v1/completions", lambda s: completion(s, prompt=[1, 99999]), 400, "prompt",
        "invalid_value"),
    "unknown parameter": (
        "/v1/completions", lambda s: completion(s, best_of=3), 400, "best_of", "invalid_value"),
    "unknown model name": (
        "/v1/completions", lambda s: completion(s, model="gpt-9"), 404, "model", "model_not_found"),
    "unknown model name in chat": (
        "/v1/chat/completions",
        lambda s: {"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404,
        "model", "model_not_found"),
    "unknown role": (
        "/v1/chat/completions",
        lambda s: {"model": s.model, "messages": [{"role": "robot", "content": "hi"}]}, 400,
        "messages.0.role", "invalid_value"),
    "image that is not base64": (
        "/v1/chat/completions", lambda s: chat_with(s, image_part("data:image/png;base64,@@@")),
        400, "messages.0.content.1", "invalid_media"),
    "image bytes that are no PNG": (
        "/v1/chat/completions", lambda s: chat_with(s, image_part(
            "data:image/png;base64," + base64.b64encode(b"not a png at all").decode())),
        400, "messages.0.content.1", "invalid_media"),
    "remote image URL": (
        "/v1/chat/completions", lambda s: chat_with(s, image_part("http://example.com/cat.png")),
        400, "messages.0.content.1", "invalid_media"),
    "audio that is no WAV": (
        "/v1/chat/completions", lambda s: chat_with(s, {"type": "input_audio", "input_audio": {
            "data": base64.b64encode(b"RIFF....nonsense").decode(), "format": "wav"}}),
        400, "messages.0.content.1", "invalid_media"),
    "image over the pixel limit": (
        "/v1/chat/completions",
        lambda s: chat_with(s, image_part(png_url(MAX_IMAGE_PIXELS // 1000 + 1, 1000))),
        400, "messages.0.content.1", "invalid_media"),
    "audio below 8 kHz": (
        "/v1/chat/completions", lambda s: chat_with(s, wav_part(4000)), 400,
        "messages.0.content.1", "invalid_media"),
    "audio above 48 kHz": (
        "/v1/chat/completions", lambda s: chat_with(s, wav_part(96000)), 400,
        "messages.0.content.1", "invalid_media"),
    "more video frames than the limit": (
        "/v1/chat/completions", lambda s: chat_with(s, {"type": "video", "video": [
            {"image_url": {"url": png_url(8, 8)}, "timestamp": float(t)}
            for t in range(MAX_VIDEO_FRAMES + 1)]}),
        400, "messages.0.content.1.video", "invalid_value"),
    "prompts x n over the per-request cap": (
        "/v1/completions", lambda s: completion(s, prompt=["a"] * 8, n=16), 400, None,
        "invalid_value"),
    "audio in an unsupported format": (
        "/v1/chat/completions", lambda s: chat_with(s, {"type": "input_audio", "input_audio": {
            "data": "AAAA", "format": "mp3"}}),
        400, "messages.0.content.1.input_audio.format", "invalid_value"),
}


# what the message of a request over a limit says: the limit
LIMITS_NAMED = {"image over the pixel limit": f"limit of {MAX_IMAGE_PIXELS} pixels",
                "audio below 8 kHz": "outside the 8000-48000 Hz",
                "audio above 48 kHz": "outside the 8000-48000 Hz",
                "more video frames than the limit": f"at most {MAX_VIDEO_FRAMES} items",
                "prompts x n over the per-request cap": "128 sequences, over the limit of 64"}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_an_error_object_naming_the_problem(http, server, case):
    path, body, status, param, code = BAD_REQUESTS[case]
    reply = http.post(path, json=body(server))
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert (error["param"], error["code"]) == (param, code), error
    assert LIMITS_NAMED.get(case, "") in error["message"]


def test_malformed_json_and_a_body_over_the_limit(http, server):
    for content in (b'{"model": "x", "prompt": ', b"not json"):
        reply = http.post("/v1/completions", content=content,
                          headers={"Content-Type": "application/json"})
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "json_invalid"
    reply = http.post("/v1/completions", content=b"[1]", headers={"Content-Type": "application/json"})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_body"
    huge = completion(server, prompt="x" * (300 * 1024))  # the tests' limit is 256 KiB
    reply = http.post("/v1/completions", json=huge)
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "request_too_large"

    def chunked():  # no Content-Length: counted as it arrives
        yield b'{"model": "%s", "prompt": "' % server.model.encode()
        for _ in range(300):
            yield b"x" * 1024
        yield b'"}'

    reply = http.post("/v1/completions", content=chunked(),
                      headers={"Content-Type": "application/json"})
    assert reply.status_code == 413


def test_the_key_is_required_except_for_health_and_schema(server):
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        for path in ("/healthz", "/readyz", "/openapi.json"):
            assert anonymous.get(path).status_code == 200
        ready = anonymous.get("/readyz").json()
        assert ready["model"] == server.model and ready["approved"] is False  # --unapproved
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": server.key}):
            reply = anonymous.post("/v1/completions", json=completion(server), headers=headers)
            assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
        assert anonymous.get("/v1/models").status_code == 401


def test_the_server_keeps_serving_and_never_logs_the_key(http, server, ray_local):
    for body in ({"model": server.model}, completion(server, max_tokens=10 ** 9)):
        assert http.post("/v1/completions", json=body).status_code == 400
    reply = http.post("/v1/completions", json=completion(server))
    assert reply.status_code == 200
    body = reply.json()
    assert isinstance(body["choices"][0]["text"], str)
    assert 1 <= body["usage"]["completion_tokens"] <= 2  # it generated, within max_tokens
    logs = Path(ray_local._private.worker._global_node.get_logs_dir_path())  # Serve's included
    written = [p for p in logs.rglob("*") if p.is_file()]
    assert written and not [p for p in written if server.key.encode() in p.read_bytes()]
