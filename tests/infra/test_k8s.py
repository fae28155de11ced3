"""The RayService deployer (infra/k8s.py) and RayJob builders (infra/rayjob.py), offline.

No Kubernetes API server can run here, so a small fake of the CustomObjectsApi replays status
sequences (tests/infra/data, see its README) and applies the deployer's writes exactly as the
API server would (JSON patch, generation on spec changes); every object the deployer sends is
validated against the KubeRay v1.7 CRD schemas from ../shared/data/kuberay-crds.
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import jsonpatch
import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from infra import k8s, rayjob
from infra.settings import Settings

DATA = Path(__file__).parent / "data"
CRD_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "kuberay-crds"
KUBERNETES_VERSION = "1.32"


def _strict(schema):
    """The CRD schema with unknown fields refused, as `kubectl apply --validate=strict` does
    (a structural schema otherwise prunes them silently)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def kuberay_validators() -> dict[str, jsonschema.Draft7Validator]:
    """kind -> a strict validator of ray.io/v1 objects; the test is skipped without the CRDs."""
    if not CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRD_DIR} (../shared is not in a user's clone)")
    validators = {}
    for path in sorted(CRD_DIR.glob("ray.io_*.yaml")):
        crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)  # 3 MB of YAML
        v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        validators[crd["spec"]["names"]["kind"]] = jsonschema.Draft7Validator(
            _strict(v1["schema"]["openAPIV3Schema"]))
    return validators


def validate_object(obj: dict, validators: dict) -> None:
    """A rendered or sent object against its schema: ray.io kinds against the KubeRay CRDs
    (metadata as Kubernetes ObjectMeta), everything else with kubernetes-validate, strict."""
    if obj["apiVersion"] == "ray.io/v1":
        if validators is None:
            pytest.skip(f"KubeRay CRDs not found at {CRD_DIR} (../shared is not in a user's clone)")
        errors = sorted(validators[obj["kind"]].iter_errors(obj), key=lambda e: list(e.path))
        assert not errors, f"{obj['kind']} {obj['metadata']['name']}: " + "; ".join(
            f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5])
        obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.fixture(scope="module")
def validators():
    """The CRD validators, or None without ../shared: the deployer's logic is still tested, and
    the tests that check objects against the CRDs skip."""
    return kuberay_validators() if CRD_DIR.is_dir() else None


def main_rayservice() -> dict:
    return json.loads((DATA / "rayservice_longmix.json").read_text())


def scenario(name: str) -> dict[str, list[list[dict]]]:
    return json.loads((DATA / f"statuses_{name}.json").read_text())["statuses"]


class ReplayingCustomObjectsApi:
    """The four CustomObjectsApi calls the deployer makes. Writes are applied as the API server
    applies them; each GET after the n-th write of an object returns the next status of
    `statuses[name][n-1]` (the last one repeats)."""

    def __init__(self, statuses, validators, objects=None):
        self.store = {o["metadata"]["name"]: o
                      for o in (objects if objects is not None else [main_rayservice()])}
        self.statuses, self.validators = statuses, validators
        self.writes: dict[str, int] = {}
        self.reads: dict[str, int] = {}
        self.calls: list[tuple] = []
        self.resource_versions = itertools.count(50000)

    def _status(self, name):
        n = self.writes.get(name, 0)
        if n == 0:
            return self.store[name].get("status", {})
        sequence = self.statuses[name][n - 1]
        self.reads[name] = self.reads.get(name, 0) + 1
        return sequence[min(self.reads[name], len(sequence)) - 1]

    def _wrote(self, name, obj):
        if self.validators is not None:
            validate_object(obj, self.validators)
        obj["metadata"]["resourceVersion"] = str(next(self.resource_versions))
        self.store[name] = obj
        self.writes[name] = self.writes.get(name, 0) + 1
        self.reads.pop(name, None)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(("get", name))
        if name not in self.store:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy({**self.store[name], "status": self._status(name)})

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **kwargs):
        assert (group, version, plural) == ("ray.io", "v1", "rayservices")
        assert kwargs["field_validation"] == "Strict"
        name = body["metadata"]["name"]
        self.calls.append(("create", name, copy.deepcopy(body)))
        if name in self.store:
            raise ApiException(status=409, reason="AlreadyExists")
        obj = copy.deepcopy(body)
        obj["metadata"].update(generation=1, uid=f"uid-{name}")
        self._wrote(name, obj)
        return copy.deepcopy(obj)

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body,
                                       **kwargs):
        assert kwargs["_content_type"] == "application/json-patch+json"
        self.calls.append(("patch", name, copy.deepcopy(body)))
        current = {k: v for k, v in self.store[name].items() if k != "status"}
        try:
            obj = jsonpatch.apply_patch(current, body)
        except jsonpatch.JsonPatchTestFailed as e:
            raise ApiException(status=422, reason=f"Unprocessable Entity: {e}") from None
        if obj["spec"] != current["spec"]:
            obj["metadata"]["generation"] += 1
        self._wrote(name, obj)
        return copy.deepcopy(obj)

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(("delete", name))
        if self.store.pop(name, None) is None:
            raise ApiException(status=404, reason="Not Found")

    def verbs(self, name):
        return [c[0] for c in self.calls if c[1] == name and c[0] != "get"]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def target(api, timeout_s=1800.0):
    clock = FakeClock()
    settings = Settings(deploy_target="rayservice", k8s_namespace="longmix",
                        k8s_rayservice="longmix", k8s_ready_timeout_s=timeout_s)
    return k8s.RayServiceTarget(settings, api=api, poll_s=5.0, clock=clock, sleep=clock.sleep)


def test_recorded_objects_follow_the_crd(validators):
    main = main_rayservice()
    validate_object(main, validators)
    for path in sorted(DATA.glob("statuses_*.json")):
        for writes in json.loads(path.read_text())["statuses"].values():
            for status in itertools.chain.from_iterable(writes):
                validate_object({**main, "status": status}, validators)


DIGEST = "ab" * 32  # the approved digest a deployment pins


def test_serve_config_names_the_builder_and_the_version():
    config = yaml.safe_load(k8s.serve_config("models:/longmix/4", DIGEST))
    assert config == {"applications": [{
        "name": "longmix", "route_prefix": "/", "import_path": "workers.serve.app:build_app",
        "args": {"model": "models:/longmix/4", "digest": DIGEST}}]}


def test_serve_app_builds_the_longmix_application_from_the_import_path(monkeypatch, tmp_path):
    from ray import serve
    from ray._common.utils import import_attr

    from infra.settings import get_settings

    monkeypatch.setenv("LONGMIX_HOME", str(tmp_path))
    get_settings.cache_clear()
    try:
        builder = import_attr(k8s.SERVE_IMPORT_PATH)  # as Serve resolves serveConfigV2
        app = builder({"model": "models:/longmix/4", "digest": DIGEST})
    finally:
        get_settings.cache_clear()
    assert isinstance(app, serve.Application)
    deployment = app._bound_deployment  # Serve exposes no public accessor for what was bound
    assert deployment.name == "LongmixServer"
    assert deployment.init_args[0] == "models:/longmix/4"  # the model the serveConfigV2 names
    assert deployment.init_args[1].home == tmp_path  # settings from the pod's environment
    assert deployment.init_args[2] == DIGEST  # replicas load only the approved files


def test_candidate_is_the_main_cluster_with_the_new_version(validators):
    main = main_rayservice()
    candidate = k8s.candidate_rayservice(main, "models:/longmix/4", "4", DIGEST)
    validate_object(candidate, validators)
    assert candidate["metadata"]["name"] == "longmix-v4"
    assert candidate["metadata"]["labels"]["longmix.io/model-version"] == "4"
    assert "app.kubernetes.io/managed-by" not in candidate["metadata"]["labels"]  # not Helm's
    assert candidate["spec"]["serveConfigV2"] == k8s.serve_config("models:/longmix/4", DIGEST)
    unchanged = copy.deepcopy(candidate["spec"])
    del unchanged["serveConfigV2"]
    del unchanged["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]["annotations"]
    expected = {k: v for k, v in main["spec"].items() if k != "serveConfigV2"}
    assert unchanged == expected
    assert main == main_rayservice()  # the main object itself is not modified
    with pytest.raises(k8s.RayServiceError, match="longer than KubeRay's 47 characters"):
        k8s.candidate_name("a" * 42, "1234")


def test_promotion_creates_candidate_then_upgrades_main_and_removes_candidate(validators):
    api = ReplayingCustomObjectsApi(scenario("promotion_ok"), validators)
    deployer = target(api)
    assert deployer.serving_version() == "1"

    url = deployer.start_candidate("models:/longmix/4", "4", DIGEST)
    assert url == "http://longmix-v4-serve-svc.longmix.svc:8000"
    assert api.verbs("longmix-v4") == ["create"]
    assert api.verbs("longmix") == []  # the public RayService is untouched until the switch

    public = deployer.switch_traffic("4")
    assert public == "http://longmix-serve-svc.longmix.svc:8000"
    assert api.verbs("longmix") == ["patch"]
    assert api.verbs("longmix-v4") == ["create", "delete"]
    main = api.store["longmix"]
    assert main["metadata"]["generation"] == 2
    assert main["spec"]["serveConfigV2"] == k8s.serve_config("models:/longmix/4", DIGEST)
    head = main["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]
    assert head["annotations"]["longmix.io/model-version"] == "4"  # forces the new cluster
    # it waited through observedGeneration 1, the pending cluster's creation, DEPLOYING and
    # RUNNING, until the active cluster was the new one: all five recorded statuses
    assert api.reads["longmix"] == 5
    assert deployer.serving_version() == "4"


def test_patch_refuses_a_spec_changed_since_it_was_read(validators):
    api = ReplayingCustomObjectsApi(scenario("promotion_ok"), validators)
    deployer = target(api)
    deployer.start_candidate("models:/longmix/4", "4", DIGEST)
    stale = main_rayservice()
    api.store["longmix"]["metadata"]["generation"] = 7  # someone ran `helm upgrade` meanwhile
    patch = k8s.replace_spec_patch(stale, stale["spec"], "4")
    with pytest.raises(k8s.RayServiceError, match="cannot patch RayService longmix/longmix"):
        deployer._patch("longmix", patch)


def test_candidate_that_fails_to_deploy_is_deleted_and_main_untouched(validators):
    api = ReplayingCustomObjectsApi(scenario("candidate_deploy_failed"), validators)
    deployer = target(api)
    with pytest.raises(k8s.RayServiceError) as failure:
        deployer.start_candidate("models:/longmix/4", "4", DIGEST)
    message = str(failure.value)
    assert "DEPLOY_FAILED" in message and "version=4 not found" in message
    assert "the candidate was deleted" in message
    assert api.verbs("longmix-v4") == ["create", "delete"]
    assert api.verbs("longmix") == []
    assert deployer.serving_version() == "1"


@pytest.mark.parametrize("case, reason", [
    ("switch_deploy_failed", "DEPLOY_FAILED"),
    ("switch_stuck", "not ready after 600 s (k8s_ready_timeout_s)"),
])
def test_failed_switch_restores_the_previous_spec(validators, case, reason):
    api = ReplayingCustomObjectsApi(scenario(case), validators)
    deployer = target(api, timeout_s=600)
    before = main_rayservice()
    deployer.start_candidate("models:/longmix/4", "4", DIGEST)
    with pytest.raises(k8s.RayServiceError) as failure:
        deployer.switch_traffic("4")
    message = str(failure.value)
    assert reason in message
    assert "rolled back: version 1 serves again on longmix-7xk2p" in message
    assert api.verbs("longmix") == ["patch", "patch"]
    main = api.store["longmix"]
    assert main["spec"] == before["spec"]  # exactly the previous spec
    assert main["metadata"]["labels"] == before["metadata"]["labels"]
    assert deployer.serving_version() == "1"
    deployer.stop("4")  # the flow then stops the candidate
    assert "longmix-v4" not in api.store


def test_stop_and_serving_version_when_nothing_runs(validators):
    api = ReplayingCustomObjectsApi({}, validators, objects=[])
    deployer = target(api)
    deployer.stop("9")  # nothing to stop: no error
    assert deployer.serving_version() is None
    with pytest.raises(k8s.RayServiceError, match="install the chart"):
        deployer.start_candidate("models:/longmix/4", "4", DIGEST)
    with pytest.raises(k8s.RayServiceError, match="start_candidate first"):
        deployer.switch_traffic("4")
    api.store["longmix-v4"] = k8s.candidate_rayservice(main_rayservice(), "models:/longmix/4", "4",
                                                      DIGEST)
    with pytest.raises(k8s.RayServiceError, match="install the chart"):
        deployer.switch_traffic("4")


def test_rayjobs_follow_the_crd(validators):
    jobs = [rayjob.data_build_job("data-demo", "demo", "s3://acme/datasets/demo",
                                  cluster="longmix-ray", namespace="longmix", overwrite=True),
            rayjob.train_job("train-pretrain-1", "s3://acme/datasets/demo", cluster="longmix-ray",
                             namespace="longmix", steps=1000, workers=8, use_gpu=True,
                             storage_path="s3://acme/checkpoints"),
            rayjob.rayjob("eval-4", ["eval", "--help"], cluster="longmix-ray", namespace="longmix",
                          runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}},
                          deadline_s=3600)]
    for job in jobs:
        validate_object(job, validators)
    assert jobs[0]["spec"]["entrypoint"] == (
        "longmix data build --spec demo --out s3://acme/datasets/demo --overwrite")
    assert "--use-gpu" in jobs[1]["spec"]["entrypoint"]
    assert jobs[1]["spec"]["clusterSelector"] == {"ray.io/cluster": "longmix-ray"}
    with pytest.raises(rayjob.RayJobError, match="lowercase letters"):
        rayjob.rayjob("Train_1", ["train"], cluster="c", namespace="n")


def test_rayjob_wait_reads_the_deployment_and_job_status():
    class Api:
        def __init__(self, statuses):
            self.statuses = iter(statuses)

        def get_namespaced_custom_object(self, *args):
            return {"status": next(self.statuses)}

    clock = FakeClock()
    ok = Api([{"jobDeploymentStatus": "Initializing"},
              {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
              {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}])
    status = rayjob.wait("train-1", "longmix", 60, api=ok, clock=clock, sleep=clock.sleep)
    assert status["jobStatus"] == "SUCCEEDED" and clock.now == 20
    failed = Api([{"jobDeploymentStatus": "Failed", "jobStatus": "FAILED",
                   "reason": "AppFailed", "message": "Job entrypoint command failed"}])
    with pytest.raises(rayjob.RayJobError, match="Failed, job FAILED: AppFailed"):
        rayjob.wait("train-1", "longmix", 60, api=failed, clock=clock, sleep=clock.sleep)
