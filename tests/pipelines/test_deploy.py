"""Blue/green deployment on local Ray Serve, for real: two tiny checkpoints registered in MLflow
(SQLite in tmp_path), the serving host process on 127.0.0.1, the router at "/", and clients that
keep sending requests (some streaming) while versions switch and a bad candidate is rolled back.

Ray: a process holds one Ray connection, and deploying attaches this process to the serving
host's Ray (which outlives the command, as `longmix run` needs). So the module shuts down the
session's Ray (if a test started it) while it runs, and starts it again, with the same CPUs,
when it ends. The tests run in order: each starts from what the one before deployed.
"""

import json
import threading
import time
from dataclasses import dataclass, field

import httpx
import mlflow
import pytest
import torch
from mlflow import MlflowClient

from infra.registry import log_checkpoint_model
from infra.services import free_port
from infra.settings import Settings
from infra.storage import list_files, read_bytes
from infra.tracking import configure_mlflow
from model.checkpoint import save_checkpoint
from model.config import get_preset
from model.transformer import Transformer
from pipelines.approval import request_review, review, validate_review
from pipelines.audit import audit_log
from pipelines.deploy import (DeployError, DeploymentRecord, LocalServeTarget, SmokeConfig,
                              current_deployment, deploy, rollback, serving_champion,
                              stop_host)
from workers.serve.host import api_key, with_api_key
from workers.serve.router import VERSION_HEADER

NAME = "longmix"


@dataclass
class Setup:
    settings: Settings
    client: MlflowClient
    target: LocalServeTarget
    digests: dict[str, str]  # version -> longmix.digest
    run_id: str

    def approval(self, version: str) -> str:
        """A reviewer's approval, as the flow records it (gate passed, review requested by the
        trainer, approved by another user); deploy is given its receipt's audit hash."""
        self.client.set_model_version_tag(NAME, version, "gate.status", "passed")
        request_review(self.client, NAME, version, "trainer", self.settings)
        review(self.client, NAME, version, "approve", "reviewer")
        return validate_review(self.client, NAME, version, self.settings).audit_hash

    def deploy(self, version: str, smoke: SmokeConfig | None = None) -> DeploymentRecord:
        return deploy(self.client, NAME, version, self.settings,
                      approved_digest=self.digests[version], approval_hash=self.approval(version),
                      actor="deployer", target=self.target, smoke=smoke)

    @property
    def key(self) -> str:
        return api_key(with_api_key(self.settings))

    @property
    def url(self) -> str:
        return self.target.host.url


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    import ray

    from infra.ray_runtime import ensure_ray

    session_cpus = int(ray.cluster_resources()["CPU"]) if ray.is_initialized() else None
    home = tmp_path_factory.mktemp("deploy-home")
    settings = Settings(home=home, serve_host="127.0.0.1", serve_port=free_port("127.0.0.1"),
                        mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
                        mlflow_artifact_root=str(home / "mlartifacts"), serve_api_keys=[],
                        serve_api_key_file=None, deploy_target="local")
    configure_mlflow(settings)
    client = MlflowClient()
    run_id = client.create_run(mlflow.get_experiment_by_name(settings.mlflow_experiment)
                               .experiment_id).info.run_id
    digests = {}
    for seed in (1, 2):  # two different tiny models: versions 1 and 2
        torch.manual_seed(seed)
        folder = home / f"ckpt-{seed}"
        save_checkpoint(folder, Transformer(get_preset("tiny")), tokenizer)
        ref = log_checkpoint_model(folder, run_id, registered_name=NAME)
        digests[str(ref.version)] = ref.digest
    try:
        yield Setup(settings, client, LocalServeTarget(settings), digests, run_id)
    finally:
        stop_host(settings)
        ray.shutdown()
        mlflow.set_tracking_uri(None)
        if session_cpus is not None:  # the session's Ray, back for the tests after these
            ensure_ray(Settings(ray_num_cpus=session_cpus))


@dataclass
class Clients:
    """Threads that send completions (every other one streaming) until stopped."""
    url: str
    key: str
    answers: list[tuple[float, str | None]] = field(default_factory=list)  # (time, version)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, stream: bool) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        body = {"model": NAME, "prompt": "def f(", "max_tokens": 4, "stream": stream}
        with httpx.Client(timeout=60, headers=headers) as http:
            while not self.stop.is_set():
                try:
                    with http.stream("POST", f"{self.url}/v1/completions", json=body) as reply:
                        text = reply.read().decode()
                    done = text.rstrip().endswith("data: [DONE]") if stream else "choices" in text
                    if reply.status_code != 200 or not done:
                        self.failures.append(f"{reply.status_code}: {text[:200]}")
                    self.answers.append((time.monotonic(), reply.headers.get(VERSION_HEADER)))
                except httpx.HTTPError as e:
                    self.failures.append(f"{type(e).__name__}: {e}")

    def __enter__(self):
        self.threads = [threading.Thread(target=self.run, args=(s,)) for s in (False, True)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()


def completion(s: Setup) -> httpx.Response:
    return httpx.post(f"{s.url}/v1/completions", headers={"Authorization": f"Bearer {s.key}"},
                      json={"model": NAME, "prompt": "import os\n", "max_tokens": 4}, timeout=60)


def champion(s: Setup) -> str:
    return str(s.client.get_model_version_by_alias(NAME, "champion").version)


def test_first_deploy_serves_v1_through_the_router_and_records_it(setup):
    record = setup.deploy("1")
    assert record.version == "1" and record.replaces is None and record.rollback_target is None
    assert record.smoke.passed and {c.name for c in record.smoke.checks} == {
        "ready", "models", "completions", "logprobs", "niah"}
    assert record.endpoint == setup.url and record.target == "local"
    reply = completion(setup)
    assert reply.status_code == 200 and reply.headers[VERSION_HEADER] == "1"
    assert reply.json()["choices"][0]["text"]
    assert httpx.get(f"{setup.url}/v1/models").status_code == 401  # the key is still required
    # the router buffers no more than the limit, declared or streamed, before the key is checked
    # (a version would answer 401 to these: the router answers first)
    over = b"x" * (setup.settings.serve_max_body_bytes + 1)
    for content in (over, iter([over[:1000], over[1000:]])):
        reply = httpx.post(f"{setup.url}/v1/completions", content=content, timeout=60)
        assert reply.status_code == 413 and reply.json()["error"]["code"] == "request_too_large"
    assert champion(setup) == "1" and setup.target.serving_version() == "1"
    assert current_deployment(setup.settings, NAME) == record
    stored = list_files(f"{setup.settings.deployments_uri}/{NAME}")
    assert len(stored) == 2 and any(u.endswith("-v1.json") for u in stored)
    assert DeploymentRecord.model_validate_json(read_bytes(stored[0])) == record
    logged = setup.client.list_artifacts(setup.run_id, "deployments")
    assert [a.path for a in logged] == [f"deployments/{stored[0].rsplit('/', 1)[1]}"]
    key_file = setup.settings.home / "serve" / "api_key"
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_v2_takes_the_traffic_while_clients_keep_getting_answers(setup):
    with Clients(setup.url, setup.key) as clients:
        time.sleep(1.0)
        started = time.monotonic()
        record = setup.deploy("2")
        deployed = time.monotonic()
        time.sleep(1.0)
    first_v2 = min(t for t, v in clients.answers if v == "2")
    last_v1 = max(t for t, v in clients.answers if v == "1")
    switch_s = audit_log(setup.settings).records()[-1].details["switch_s"]
    print(f"\nblue/green deploy of v2 {deployed - started:.1f} s (smoke {record.smoke.seconds:.1f}"
          f" s, switch {switch_s:.2f} s); {len(clients.answers)} requests, "
          f"{len(clients.failures)} failed; v1 and v2 both answering for {last_v1 - first_v2:.2f} s")
    assert clients.failures == []
    versions = [v for _, v in clients.answers]
    assert versions[0] == "1" and versions[-1] == "2" and set(versions) == {"1", "2"}
    assert all(v == "2" for t, v in clients.answers if t > deployed)
    assert record.replaces.version == "1" and record.rollback_target.version == "1"
    assert champion(setup) == "2" and setup.target.serving_version() == "2"
    tags = {v: setup.client.get_model_version(NAME, v).tags["deploy.status"] for v in "12"}
    assert tags == {"1": "retired", "2": "serving"}
    from ray import serve

    assert "longmix-v1" not in serve.status().applications  # stopped once v2 took the traffic


def test_an_approval_of_other_weights_deploys_nothing(setup):
    with pytest.raises(DeployError, match="is not the approved .*the approval does not hold"):
        deploy(setup.client, NAME, "1", setup.settings, approved_digest=setup.digests["2"],
               approval_hash=setup.approval("2"), actor="deployer", target=setup.target)
    assert setup.target.serving_version() == "2" and champion(setup) == "2"


def test_a_failed_smoke_check_rolls_back_and_v2_keeps_serving(setup):
    with Clients(setup.url, setup.key) as clients:
        with pytest.raises(DeployError, match=r"failed its smoke check \(niah: .*not found.*"
                                              r"version 2 keeps serving"):
            setup.deploy("1", SmokeConfig(require_niah_found=True))  # untrained: not found
        time.sleep(0.5)
    assert clients.failures == [] and {v for _, v in clients.answers} == {"2"}
    assert champion(setup) == "2" and setup.target.serving_version() == "2"
    assert current_deployment(setup.settings, NAME).version == "2"
    last = audit_log(setup.settings).records()[-1]
    assert last.event == "rollback" and last.model == f"{NAME}/1"
    assert last.details["failed"][0].startswith("niah:") and last.details["serving"] == "2"
    assert completion(setup).headers[VERSION_HEADER] == "2"


def test_rollback_returns_to_v1(setup):
    record = rollback(setup.client, NAME, setup.settings, actor="oncall", target=setup.target)
    assert record.action == "rollback" and record.version == "1" and record.digest == (
        setup.digests["1"]) and record.rollback_target.version == "2"
    assert completion(setup).headers[VERSION_HEADER] == "1"
    assert champion(setup) == "1" and current_deployment(setup.settings, NAME) == record
    events = [(r.event, r.model) for r in audit_log(setup.settings).verify()]
    assert events[-1] == ("rollback", f"{NAME}/1")
    assert [e for e, _ in events].count("deploy") == 2
    assert json.loads(read_bytes(f"{setup.settings.deployments_uri}/{NAME}/current.json"))[
        "approval"] == record.approval


def test_a_rollback_to_a_version_whose_approval_was_withdrawn_is_refused(setup):
    """current.json names the rollback target; only the target's audited approval, as it holds
    now, lets it serve again."""
    review(setup.client, NAME, "2", "reject", "reviewer", reason="leaks canaries")
    with pytest.raises(DeployError, match=r"longmix/2, the rollback target, is not approved now: "
                                          r".*changed since the approval.*version 1 keeps serving"):
        rollback(setup.client, NAME, setup.settings, actor="oncall", target=setup.target)
    assert completion(setup).headers[VERSION_HEADER] == "1" and champion(setup) == "1"


def test_the_champion_is_what_the_audit_log_deployed_and_a_moved_alias_fails_closed(setup):
    """The change checks compare with this version: a moved or removed alias is refused, never
    taken as a first promotion."""
    champion = serving_champion(setup.client, setup.settings, NAME)
    # version 1, with the digest its signed deploy record names (not the registry's editable tag)
    assert (champion.version, champion.digest) == ("1", setup.digests["1"])
    setup.client.set_registered_model_alias(NAME, "champion", "2")
    with pytest.raises(DeployError, match=r"deployed version 1, but the `champion` alias points "
                                          r"at version 2"):
        serving_champion(setup.client, setup.settings, NAME)
    setup.client.delete_registered_model_alias(NAME, "champion")
    with pytest.raises(DeployError, match="alias points at nothing"):
        serving_champion(setup.client, setup.settings, NAME)
    setup.client.set_registered_model_alias(NAME, "champion", "1")
    assert serving_champion(setup.client, setup.settings, "never-deployed") is None


def test_a_rayservice_deploy_needs_the_key_its_pods_know(tmp_path):
    """Locally a key is made once; for a RayService it must be configured (its Secret), and a
    deploy without one is refused before any candidate starts."""
    from infra.settings import Settings
    from pipelines.deploy import DeployError, smoke_key

    with pytest.raises(DeployError, match="LONGMIX_SERVE_API_KEY_FILE"):
        smoke_key(Settings(home=tmp_path), "rayservice")
    secret = tmp_path / "key"
    secret.write_text("from-the-secret\n")
    configured = Settings(home=tmp_path, serve_api_key_file=secret)
    assert smoke_key(configured, "rayservice") == "from-the-secret"
    assert not (tmp_path / "serve" / "api_key").exists()
