"""Blue/green promotion on KubeRay: the RayService objects longmix sends and the deployer that
sends them (`RayServiceTarget`, the `rayservice` serving target of pipelines/deploy.py).

How a version moves in (docs/kubernetes.md, "Promotion on a RayService"):
1. start_candidate: a separate RayService `<main>-v<version>`, a copy of the main one's spec with
   the new serveConfigV2. It takes no public traffic; the smoke check calls its own Service.
2. switch_traffic: the main RayService's spec is replaced by the same spec plus the version as a
   pod-template annotation. The changed cluster spec makes KubeRay's `NewCluster` upgrade start a
   fresh cluster, wait until its Serve application runs, and only then point the public Service
   at it, so no request fails. (Changing serveConfigV2 alone would update Serve in place,
   replacing replicas under traffic.) The candidate RayService is then deleted.
3. Any failure while waiting: the previous spec is restored (KubeRay drops the pending cluster;
   the old one never stopped serving) or the candidate is deleted, and RayServiceError is raised.

Readiness is read from status only (KubeRay v1.7): observedGeneration, the Ready and
UpgradeInProgress conditions, and the Serve application in active/pendingServiceStatus.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from infra.settings import Settings

GROUP, API_VERSION, PLURAL = "ray.io", "v1", "rayservices"
SERVE_APP = "longmix"  # the Serve application's name in serveConfigV2 and in status
SERVE_IMPORT_PATH = "workers.serve.app:build_app"
SERVE_PORT = 8000  # KubeRay's `<rayservice>-serve-svc` port
VERSION_LABEL = "longmix.io/model-version"
# the labels a candidate inherits from the main RayService (not Helm's ownership labels)
INHERITED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                    "app.kubernetes.io/part-of", "app.kubernetes.io/component")
FIELD_MANAGER = "longmix-deployer"
MAX_NAME = 47  # KubeRay refuses longer RayService/RayJob names (it suffixes them for clusters)


class RayServiceError(RuntimeError):
    """A RayService could not be read, created, made ready, or switched; the message says which
    and what was undone."""


def serve_config(model_uri: str, digest: str) -> str:
    """serveConfigV2 for one model version, its replicas pinned to the approved digest (the
    chart's templates/_ray.tpl renders the same)."""
    app = {"name": SERVE_APP, "route_prefix": "/", "import_path": SERVE_IMPORT_PATH,
           "args": {"model": model_uri, "digest": digest}}
    return yaml.safe_dump({"applications": [app]}, sort_keys=False)


def candidate_name(main: str, version: str) -> str:
    name = f"{main}-v{version}"
    if len(name) > MAX_NAME:
        raise RayServiceError(f"candidate RayService name {name!r} is longer than KubeRay's "
                              f"{MAX_NAME} characters: shorten k8s_rayservice")
    return name


def service_url(name: str, namespace: str) -> str:
    """The in-cluster base URL of a RayService's Serve Service (KubeRay names it)."""
    return f"http://{name}-serve-svc.{namespace}.svc:{SERVE_PORT}"


def spec_for_version(spec: dict, serve_config_v2: str, version: str) -> dict:
    """A copy of a RayService spec that serves another version. The version annotation on the
    head pod template changes the cluster spec, which is what makes KubeRay upgrade to a new
    cluster instead of redeploying Serve in place."""
    spec = copy.deepcopy(spec)
    spec["serveConfigV2"] = serve_config_v2
    head = spec["rayClusterConfig"]["headGroupSpec"]["template"]
    head.setdefault("metadata", {}).setdefault("annotations", {})[VERSION_LABEL] = version
    return spec


def candidate_rayservice(main: dict, model_uri: str, version: str, digest: str) -> dict:
    """The candidate RayService: the main one's cluster, the new version's Serve config."""
    meta = main["metadata"]
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k in INHERITED_LABELS}
    labels.update({VERSION_LABEL: version, "longmix.io/role": "candidate"})
    return {"apiVersion": f"{GROUP}/{API_VERSION}", "kind": "RayService",
            "metadata": {"name": candidate_name(meta["name"], version),
                         "namespace": meta["namespace"],
                         "labels": labels},
            "spec": spec_for_version(main["spec"], serve_config(model_uri, digest), version)}


def replace_spec_patch(obj: dict, spec: dict, version: str | None) -> list[dict]:
    """A JSON patch that replaces the whole spec and the version label, refused by the API
    server if someone changed the spec since `obj` was read (generation counts spec changes;
    resourceVersion would also move with every status update the operator writes)."""
    patch = [{"op": "test", "path": "/metadata/generation", "value": obj["metadata"]["generation"]},
             {"op": "replace", "path": "/spec", "value": spec}]
    label = "/metadata/labels/" + VERSION_LABEL.replace("~", "~0").replace("/", "~1")
    if version is not None:
        if not obj["metadata"].get("labels"):
            patch.append({"op": "add", "path": "/metadata/labels", "value": {}})
        patch.append({"op": "add", "path": label, "value": version})
    elif VERSION_LABEL in (obj["metadata"].get("labels") or {}):
        patch.append({"op": "remove", "path": label})
    return patch


@dataclass(frozen=True)
class ServeState:
    ready: bool
    failure: str | None  # set: waiting longer will not help
    detail: str  # what the status says, for messages


def _condition(status: dict, kind: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


def _app(service_status: dict) -> dict:
    return (service_status.get("applicationStatuses") or {}).get(SERVE_APP) or {}


def serve_state(obj: dict, not_cluster: str | None = None,
                watch_pending: bool = True) -> ServeState:
    """Whether a RayService serves its current spec: the operator has seen this generation, the
    Ready condition holds, no upgrade is under way, and the active cluster's application runs
    (on a cluster other than `not_cluster`, the one that served before a switch). A failed
    application fails the wait at once; after a restore the pending cluster is on its way out,
    so its failure does not count (watch_pending=False)."""
    status = obj.get("status") or {}
    active = status.get("activeServiceStatus") or {}
    pending = status.get("pendingServiceStatus") or {}
    for where, service in (("pending", pending), ("active", active))[0 if watch_pending else 1:]:
        app = _app(service)
        if app.get("status") == "DEPLOY_FAILED":
            return ServeState(False, f"{where} cluster {service.get('rayClusterName')}: "
                                     f"DEPLOY_FAILED: {app.get('message', '')}".strip(), "")
    ready = _condition(status, "Ready")
    if ready.get("reason") == "InitializingTimeout":
        return ServeState(False, f"initializing timed out: {ready.get('message', '')}", "")
    seen = status.get("observedGeneration", 0) >= obj["metadata"].get("generation", 0)
    upgrading = _condition(status, "UpgradeInProgress").get("status") == "True"
    app = _app(active)
    detail = (f"observedGeneration={status.get('observedGeneration')}/"
              f"{obj['metadata'].get('generation')}, Ready={ready.get('status')} "
              f"({ready.get('reason')}), upgrading={upgrading}, "
              f"active={active.get('rayClusterName')}:{app.get('status')}, "
              f"pending={pending.get('rayClusterName')}:{_app(pending).get('status')}")
    done = (seen and ready.get("status") == "True" and not upgrading
            and app.get("status") == "RUNNING"
            and (not_cluster is None or active.get("rayClusterName") != not_cluster))
    return ServeState(done, None, detail)


def custom_objects_api():
    """The cluster's custom-objects API: in a pod its ServiceAccount, on a workstation kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()  # a flow run's pod, with the deployer's ServiceAccount
    except config.ConfigException:
        config.load_kube_config()  # a workstation
    return client.CustomObjectsApi()


def _is_not_found(error: Exception) -> bool:
    return getattr(error, "status", None) == 404


class RayServiceTarget:
    """Serving on a KubeRay RayService (settings.deploy_target == "rayservice"); implements
    pipelines.deploy.ServingTarget. State lives in the cluster, so any process can go on."""

    kind = "rayservice"

    def __init__(self, settings: Settings, api: Any = None, poll_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self.namespace = settings.k8s_namespace
        self.name = settings.k8s_rayservice
        self.api = api if api is not None else custom_objects_api()
        self.poll_s, self.clock, self.sleep = poll_s, clock, sleep

    # -- the protocol -----------------------------------------------------------------------

    def start_candidate(self, model_uri: str, version: str, digest: str) -> str:
        main = self._main()
        candidate = candidate_rayservice(main, model_uri, version, digest)
        name = candidate["metadata"]["name"]
        existing = self._get(name)
        if existing is None:
            self._create(candidate)
        else:  # a retried promotion: reuse the object, with this spec
            self._patch(name, replace_spec_patch(existing, candidate["spec"], version))
        failure = self._wait(name)
        if failure:
            self._delete(name)
            raise RayServiceError(f"candidate {self.namespace}/{name} ({model_uri}) did not become "
                                  f"ready: {failure}; the candidate was deleted")
        return service_url(name, self.namespace)

    def switch_traffic(self, version: str) -> str:
        if self.serving_version() == version:  # already switched (a retried call)
            self._delete(candidate_name(self.name, version))
            return self.public_url()
        candidate = self._get(candidate_name(self.name, version))
        if candidate is None:
            raise RayServiceError(f"no candidate RayService for version {version}: "
                                  "start_candidate first")
        main = self._main()
        previous_version = (main["metadata"].get("labels") or {}).get(VERSION_LABEL)
        previous_cluster = ((main.get("status") or {}).get("activeServiceStatus") or {}).get(
            "rayClusterName")
        spec = spec_for_version(main["spec"], candidate["spec"]["serveConfigV2"], version)
        switched = self._patch(self.name, replace_spec_patch(main, spec, version))
        failure = self._wait(self.name, not_cluster=previous_cluster)
        if failure:
            self._restore(switched, main["spec"], previous_version, previous_cluster, failure)
        self._delete(candidate_name(self.name, version))
        return self.public_url()

    def stop(self, version: str) -> None:
        """Deletes version's candidate RayService if there is one. A retired version needs
        nothing: KubeRay deletes the old cluster rayClusterDeletionDelaySeconds after a switch.
        The main RayService is never deleted here."""
        self._delete(candidate_name(self.name, version))

    def serving_version(self) -> str | None:
        main = self._get(self.name)
        return None if main is None else (main["metadata"].get("labels") or {}).get(VERSION_LABEL)

    def public_url(self) -> str:
        return self.settings.k8s_serve_url or service_url(self.name, self.namespace)

    # -- waiting and rollback ---------------------------------------------------------------

    def _wait(self, name: str, not_cluster: str | None = None,
              watch_pending: bool = True) -> str | None:
        """None once the RayService serves its spec; else why not (a failure, or the timeout)."""
        deadline = self.clock() + self.settings.k8s_ready_timeout_s
        while True:
            obj = self._get(name)
            if obj is None:
                return "the RayService disappeared while waiting"
            state = serve_state(obj, not_cluster, watch_pending)
            if state.ready or state.failure:
                return state.failure
            if self.clock() >= deadline:
                return (f"not ready after {self.settings.k8s_ready_timeout_s:g} s "
                        f"(k8s_ready_timeout_s): {state.detail}")
            self.sleep(self.poll_s)

    def _restore(self, switched: dict, spec: dict, version: str | None,
                 cluster: str | None, failure: str) -> None:
        """Put the previous spec back and wait until the previous cluster serves alone again."""
        self._patch(self.name, replace_spec_patch(switched, spec, version))
        restored = self._wait(self.name, watch_pending=False)
        active = ((self._get(self.name) or {}).get("status") or {}).get(
            "activeServiceStatus", {}).get("rayClusterName")
        outcome = (f"rolled back: version {version} serves again on {active}"
                   if restored is None and active == cluster
                   else f"rollback to version {version} not confirmed: {restored or active}")
        raise RayServiceError(f"switching {self.namespace}/{self.name} failed: {failure}; "
                              f"{outcome}")

    # -- the API calls (RBAC: get, create, patch, delete on rayservices) --------------------

    def _main(self) -> dict:
        main = self._get(self.name)
        if main is None:
            raise RayServiceError(f"RayService {self.namespace}/{self.name} does not exist: "
                                  "install the chart with serving.enabled and serving.modelUri "
                                  "first")
        return main

    def _get(self, name: str) -> dict | None:
        try:
            return self.api.get_namespaced_custom_object(GROUP, API_VERSION, self.namespace,
                                                         PLURAL, name)
        except Exception as error:
            if _is_not_found(error):
                return None
            raise RayServiceError(f"cannot read RayService {self.namespace}/{name}: "
                                  f"{error}") from error

    def _create(self, obj: dict) -> dict:
        return self._call("create", obj["metadata"]["name"],
                          lambda: self.api.create_namespaced_custom_object(
                              GROUP, API_VERSION, self.namespace, PLURAL, obj,
                              field_manager=FIELD_MANAGER, field_validation="Strict"))

    def _patch(self, name: str, patch: list[dict]) -> dict:
        return self._call("patch", name, lambda: self.api.patch_namespaced_custom_object(
            GROUP, API_VERSION, self.namespace, PLURAL, name, patch, field_manager=FIELD_MANAGER,
            field_validation="Strict", _content_type="application/json-patch+json"))

    def _delete(self, name: str) -> None:
        try:
            self.api.delete_namespaced_custom_object(GROUP, API_VERSION, self.namespace, PLURAL,
                                                     name)
        except Exception as error:
            if not _is_not_found(error):
                raise RayServiceError(f"cannot delete RayService {self.namespace}/{name}: "
                                      f"{error}") from error

    def _call(self, verb: str, name: str, call: Callable[[], dict]) -> dict:
        try:
            return call()
        except Exception as error:
            raise RayServiceError(f"cannot {verb} RayService {self.namespace}/{name}: "
                                  f"{error}") from error
