"""The serving metrics reach Ray's Prometheus export beside Ray Serve's own."""

import time

import httpx

METRICS = ("ray_longmix_requests_total", "ray_longmix_request_latency_s_bucket",
           "ray_longmix_generated_tokens_total", "ray_longmix_decode_tokens_per_s",
           "ray_longmix_batch_size_bucket")


def exported_total(exported: str, name: str, *labels: str) -> float:
    """The sum of a metric's exported series, those carrying every one of `labels`."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in exported.splitlines()
               if line.startswith((name + "{", name + " "))
               and all(label in line for label in labels))


def completions_answered(exported: str) -> float:
    """The exported count of 200s on /v1/completions."""
    return exported_total(exported, "ray_longmix_requests_total", 'path="/v1/completions"',
                          'status="200"')


def test_requests_latency_tokens_and_batch_sizes_are_exported(server, ray_local):
    reply = httpx.post(f"{server.url}/v1/completions", headers=server.headers, timeout=30,
                       json={"model": server.model, "prompt": "def", "max_tokens": 3})
    assert reply.status_code == 200
    port = ray_local._private.worker._global_node.metrics_export_port
    deadline, exported = time.monotonic() + 60, ""
    while time.monotonic() < deadline:  # Ray exports every few seconds
        exported = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if all(name in exported for name in METRICS) and completions_answered(exported) >= 1:
            break
        time.sleep(1)
    assert [name for name in METRICS if name not in exported] == []
    assert completions_answered(exported) >= 1
    # the values count what was served: this request's tokens at least, and a latency observed
    assert exported_total(exported, "ray_longmix_generated_tokens_total") >= \
        reply.json()["usage"]["completion_tokens"] >= 1
    assert exported_total(exported, "ray_longmix_request_latency_s_count") >= 1
