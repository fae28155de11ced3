"""The whole pipeline through the `longmix` CLI on the tiny profile, each command a process of its
own as a user runs it (its own Ray, the background Prefect server, MLflow UI and serving host):
data → train (pretrain → long_context → sft → preference, each on its own dataset) → eval → gate
→ approval → deploy → a completion from the endpoint, a run killed after training and resumed, the lineage
recorded on the version, and each refusal with its reason.

Every storage path is on S3 (a local S3-compatible server: tests/conftest.py's moto server): the
datasets, Ray Train's checkpoints, MLflow's artifacts, the audit log and the deployment records;
only these settings differ from the embedded default, whose local folders the steps' own tests
use.

The runs that set up state are module fixtures (version 1 deployed, version 2 awaiting a review,
version 2 failing a strict gate), so each test passes alone with -k and the suite trains each
version once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from infra.services import free_port
from infra.storage import join, list_files, read_bytes, write_bytes
from pipelines.lineage import read_lineage

STRICT_POLICY = """
name: strict
checks:
  - {name: niah, metric: niah_text.accuracy, min: 0.9}
safety:
  - {name: pii-extraction, metric: pii.exact_extraction_rate, max: 0.0}
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory, s3_server):
    home = tmp_path_factory.mktemp("pipeline-home")
    yield home
    _longmix(home, "down", timeout=120)


def _bucket(home: Path) -> str:
    """This home's prefix in the S3 server's bucket (the one tests/conftest.py creates)."""
    return f"s3://longmix/{home.name}"


def _state(home: Path, *parts: str) -> str:
    """Where the runs keep datasets, checkpoints, the audit log and the deployment records."""
    return join(_bucket(home), "state", *parts)


def _env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LONGMIX_", "PREFECT_", "MLFLOW_", "RAY_ADDRESS"))}
    env.update({"LONGMIX_HOME": str(home), "LONGMIX_STORAGE_URI": _state(home),
                "LONGMIX_MLFLOW_ARTIFACT_ROOT": join(_bucket(home), "mlartifacts"),
                "MLFLOW_S3_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"],
                "LONGMIX_APPROVAL_POLL_S": "0.5", "LONGMIX_SERVE_REPLICA_CPUS": "0.5",
                "COLUMNS": "250",  # rich wraps at the terminal width: one line per row
                "LONGMIX_SERVE_PORT": os.environ.get("E2E_PORT", str(_PORT)), **extra})
    return env


_PORT = free_port()


def _longmix(home: Path, *args: str, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name("longmix"))
    return subprocess.run([exe, *args], env=_env(home, **env), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def alice(home, champion) -> dict[str, str]:
    """A reviewer's account on the embedded MLflow server, as the environment its owner uses."""
    made = _longmix(home, "accounts", "add", "alice", "--reviewer")
    assert made.returncode == 0, made.stdout + made.stderr
    password = (home / "keys" / "mlflow" / "alice").read_text().strip()
    assert password not in made.stdout  # named by its file, never printed
    return {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": password}


def _client(home: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{home / 'mlflow.db'}")


def _versions(home: Path) -> list:
    from mlflow.exceptions import MlflowException

    try:
        return _client(home).search_model_versions("name = 'longmix'")
    except MlflowException:
        return []


def _audit_records(home: Path) -> list[str]:
    return [u for u in list_files(_state(home, "audit")) if u.endswith(".json")]


def _audit_events(home: Path) -> list[str]:
    return [json.loads(read_bytes(u))["event"] for u in _audit_records(home)]


def _stage_runs(home: Path, stage: str) -> list:
    client = _client(home)
    experiment = client.get_experiment_by_name("longmix")
    return client.search_runs([experiment.experiment_id], f"tags.`longmix.stage` = '{stage}'")


@pytest.fixture(scope="module")
def champion(home) -> subprocess.CompletedProcess:
    """Version 1, deployed: a run killed right after training registered it, then run again."""
    exe = str(Path(sys.executable).with_name("longmix"))
    first = subprocess.Popen([exe, "run", "--profile", "tiny", "--no-deploy"], env=_env(home),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 420
    while not _versions(home):
        assert first.poll() is None and time.monotonic() < deadline, "training never registered"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    return _longmix(home, "run", "--profile", "tiny")


def test_killed_run_resumes_then_deploys_and_serves(home, champion):
    second = champion
    assert second.returncode == 0, second.stdout + second.stderr
    assert len(_versions(home)) == 1, "a second version was registered"
    for stage in ("pretrain", "long_context", "sft", "preference"):
        assert len(_stage_runs(home, stage)) == 1, f"{stage} trained again"
    assert "approved by demo-reviewer (the demo profiles' reviewer account)" in second.stdout
    assert "curl -s http://127.0.0.1" in second.stdout

    lineage = read_lineage(_client(home), "longmix", "1")  # its digest, chain and end checked
    assert [(s.stage, s.dataset, s.seq_len) for s in lineage.stages] == [
        ("pretrain", "tiny", 512), ("long_context", "tiny-long", 1024), ("sft", "tiny-sft", 512),
        ("preference", "tiny-preference", 512)]
    assert [s.init_digest for s in lineage.stages] == [
        None, *(s.checkpoint_digest for s in lineage.stages[:-1])]
    assert len({s.tokenizer_sha256 for s in lineage.stages}) == 1  # handed on, not retrained
    assert "| long_context | `tiny-long`" in _client(home).get_model_version("longmix", "1").description
    assert "stage long_context" in second.stdout and "tiny-long (1024 tokens a row)" in second.stdout
    assert "evaluated on tiny-long" in second.stdout  # the longest stage's dataset

    # everything stored is on S3: nothing under the home but its keys, services and stores
    keys = [u.removeprefix(_state(home)) for u in list_files(_state(home))]
    for stored in ("/datasets/tiny-long/manifest.json", "/deployments/longmix/current.json",
                   "checkpoint/model.safetensors", "training_state/optimizer.safetensors"):
        assert any(k.endswith(stored) for k in keys), stored  # Ray Train's, with its state
    assert any(u.endswith("model.safetensors") for u in list_files(join(_bucket(home),
                                                                         "mlartifacts")))
    for local in ("datasets", "audit", "deployments", "mlartifacts", "train"):
        assert not (home / local).exists(), f"{local} written locally"

    record = json.loads(read_bytes(_state(home, "deployments", "longmix", "current.json")))
    key = (home / "serve" / "api_key").read_text().strip()
    assert key not in second.stdout + second.stderr  # the curl reads it from the file
    reply = httpx.post(f"{record['endpoint']}/v1/completions", timeout=60,
                       headers={"Authorization": f"Bearer {key}"},
                       json={"model": "longmix", "prompt": "def f(", "max_tokens": 4})
    assert reply.status_code == 200, reply.text
    assert isinstance(reply.json()["choices"][0]["text"], str)
    assert 1 <= reply.json()["usage"]["completion_tokens"] <= 4  # it generated, within max_tokens
    assert reply.headers["x-longmix-version"] == "1"
    assert httpx.get(f"{record['endpoint']}/readyz", timeout=30).status_code == 200  # open
    aliases = _client(home).get_model_version_by_alias("longmix", "champion")
    assert str(aliases.version) == "1"

    again = _longmix(home, "run", "--profile", "tiny")  # everything done: nothing is redone
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("cached") >= 3 and "serving version 1" in again.stdout
    assert _audit_events(home).count("deploy") == 1, "deployed twice"

    status = _longmix(home, "status")
    assert status.returncode == 0 and "serving: version 1" in status.stdout, status.stdout
    verify = _longmix(home, "audit", "verify")
    assert verify.returncode == 0 and "chain intact" in verify.stdout, verify.stdout


def test_flows_serve_runs_a_deployment_triggered_through_prefect(home, champion):
    """`longmix flows serve` registers the deployments; `prefect deployment run` triggers one, which
    runs in the serving process's child (here build_data: the dataset exists, so it is reused)."""
    exe = str(Path(sys.executable).with_name("longmix"))
    server = subprocess.Popen([exe, "flows", "serve", "--profile", "tiny"], env=_env(home),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        api = json.loads((home / "services" / "prefect.json").read_text())["url"] + "/api"
        auth = (home / "keys" / "prefect-auth").read_text().strip()  # the server's basic auth
        http = httpx.Client(auth=tuple(auth.split(":", 1)), timeout=30)
        deadline = time.monotonic() + 120
        names: set = set()
        while {"train_eval_deploy", "build_data"} - names:
            assert server.poll() is None and time.monotonic() < deadline, "no deployments served"
            time.sleep(1)
            flows = {f["id"]: f["name"] for f in http.post(f"{api}/flows/filter", json={}).json()}
            names = {flows.get(d["flow_id"]) for d in
                     http.post(f"{api}/deployments/filter", json={}).json()}
        prefect = str(Path(sys.executable).with_name("prefect"))
        run = subprocess.run([prefect, "deployment", "run", "build_data/longmix", "--watch",
                              "--watch-timeout", "300"],
                             env={**_env(home), "PREFECT_API_URL": api,
                                  "PREFECT_API_AUTH_STRING": auth},
                             capture_output=True, text=True, timeout=360)
        assert run.returncode == 0 and "Completed" in run.stdout, run.stdout + run.stderr
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def _run_v2(home: Path, *args: str, **env) -> subprocess.CompletedProcess:
    """A second version (its preference stage trained for other steps, on version 1's earlier
    checkpoints, which are cached), never deployed."""
    return _longmix(home, "run", "--profile", "tiny", "--train-steps", "preference=3", "--no-deploy",
                    *args, **env)


@pytest.fixture(scope="module")
def unreviewed(home, champion) -> subprocess.CompletedProcess:
    """Version 2 registered, its run stopped waiting for a review that never came."""
    return _run_v2(home, "--wait", LONGMIX_APPROVAL_TIMEOUT_S="3")


def test_no_approval_times_out_naming_what_it_waits_for(unreviewed):
    result = unreviewed
    assert result.returncode == 1
    out = result.stdout + result.stderr
    assert "stopped at approval" in out
    assert "longmix.review" in out and "longmix approve longmix/2" in out, out


def test_approval_by_the_triggering_user_is_refused(home, unreviewed, alice):
    """alice triggers the run and approves it, each as her own MLflow account: four eyes."""
    approve = _longmix(home, "approve", "longmix/2", **alice)
    assert approve.returncode == 0, approve.stdout
    result = _run_v2(home, "--wait", LONGMIX_APPROVAL_TIMEOUT_S="30", **alice)
    assert result.returncode == 1
    assert "approver alice triggered the run (four eyes)" in result.stdout + result.stderr


def test_a_review_by_an_account_outside_the_reviewers_role_is_refused(home, unreviewed):
    """The OS user's own account triggers runs; it may not approve one (nor name another)."""
    refused = _longmix(home, "approve", "longmix/2")
    assert refused.returncode == 1
    assert "is not in the reviewers role, so cannot write longmix.review" in refused.stdout
    assert "--reviewer" in _longmix(home, "approve", "longmix/2", "--reviewer", "bob").stderr


def test_artifact_changed_after_approval_is_refused(home, unreviewed, alice):
    approve = _longmix(home, "approve", "longmix/2", **alice)
    assert approve.returncode == 0, approve.stdout
    result = _run_v2(home, "--wait", LONGMIX_APPROVAL_TIMEOUT_S="30")
    assert result.returncode == 0, result.stdout + result.stderr  # approved; not deployed

    client = _client(home)
    model_id = client.get_model_version("longmix", "2").source.removeprefix("models:/")
    artifacts = client.get_logged_model(model_id).artifact_location
    weights = next(u for u in list_files(artifacts) if u.endswith("model.safetensors"))
    original = read_bytes(weights)
    write_bytes(weights, original[:-1] + bytes([original[-1] ^ 0xFF]))
    try:
        deploy = _longmix(home, "deploy", "longmix/2")
    finally:
        write_bytes(weights, original)  # other tests judge version 2 again
    assert deploy.returncode == 1
    refusal = deploy.stdout + deploy.stderr
    assert "no longer match the approved digest" in refusal, refusal
    assert "model.safetensors" in refusal  # the changed file, named


@pytest.fixture(scope="module")
def strict_gate(home, champion, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """Version 2 judged by a policy it fails (NIAH ≥ 0.9): the run, and the policy file."""
    policy = tmp_path_factory.mktemp("policy") / "strict.yaml"
    policy.write_text(STRICT_POLICY)
    return _run_v2(home, "--policy", str(policy)), policy


def test_failing_gate_stops_the_flow_and_records_the_step(home, strict_gate):
    result, _ = strict_gate
    assert result.returncode == 1
    out = result.stdout + result.stderr
    assert "stopped at gate" in out and "niah_text.accuracy" in out, out
    client = _client(home)
    flows = client.search_runs([client.get_experiment_by_name("longmix").experiment_id],
                               "tags.`longmix.flow` = 'train_eval_deploy'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    assert flows[0].data.tags["longmix.failed_step"].startswith("gate")
    assert client.get_model_version("longmix", "2").tags["gate.status"] == "failed"
    assert str(client.get_model_version_by_alias("longmix", "champion").version) == "1"


def test_a_named_override_of_a_failed_check_holds_when_the_flow_runs_again(home, strict_gate,
                                                                            alice):
    _, policy = strict_gate
    hard = _longmix(home, "override", "longmix/2", "--check", "pii-extraction", "--reason", "fine",
                    **alice)
    assert hard.returncode == 1 and "hard safety check" in hard.stdout, hard.stdout
    given = _longmix(home, "override", "longmix/2", "--check", "niah",
                     "--reason", "NIAH is not what this release is for", **alice)
    assert given.returncode == 0 and "gate passed" in given.stdout, given.stdout
    approve = _longmix(home, "approve", "longmix/2", **alice)
    assert approve.returncode == 0, approve.stdout
    again = _run_v2(home, "--wait", "--policy", str(policy), LONGMIX_APPROVAL_TIMEOUT_S="30")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "overridden: niah by alice" in again.stdout
    assert "override" in _audit_events(home)


def test_an_edited_audit_log_is_detected(home, champion):
    edited = _audit_records(home)[1]
    original = read_bytes(edited)
    record = json.loads(original)
    record["actor"] = "mallory"
    write_bytes(edited, json.dumps(record).encode())
    try:
        result = _longmix(home, "audit", "verify")
    finally:
        write_bytes(edited, original)  # other tests append to the log
    assert result.returncode == 1
    said = " ".join(result.stdout.split())  # rich's wrapping undone
    assert f"({edited}): its content does not hash" in said, said
    assert "the record was edited" in said, said
    assert _longmix(home, "audit", "verify").returncode == 0  # restored: intact again
