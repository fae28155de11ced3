"""RayJobs for the data and training steps at scale: the `longmix` CLI as the entrypoint, run on
the chart's autoscaling RayCluster (selected by name), submitted and followed through the
Kubernetes API (RBAC: get, create, delete on rayjobs, the `flows` ServiceAccount's Role).

HTTPMode: the KubeRay operator submits the job to the cluster's dashboard itself, so no
submitter pod needs network access to the Ray head (the chart's NetworkPolicies allow the
operator in). The Ray pods already carry longmix's settings and secrets (the chart's env).
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable
from typing import Any

import yaml

from infra.k8s import API_VERSION, GROUP, MAX_NAME, custom_objects_api

PLURAL = "rayjobs"
NAME = re.compile(rf"^[a-z]([-a-z0-9]{{0,{MAX_NAME - 2}}}[a-z0-9])?$")  # a DNS-1035 label
FINISHED = {"Complete", "Failed", "ValidationFailed"}  # jobDeploymentStatus values that end a job


class RayJobError(RuntimeError):
    """A RayJob could not be built, submitted, or did not succeed; the message says why."""


def rayjob(name: str, cli_args: list[str], *, cluster: str, namespace: str,
           runtime_env: dict | None = None, deadline_s: int | None = None) -> dict:
    """A RayJob that runs `longmix <cli_args>` on the RayCluster named `cluster`."""
    if not NAME.match(name):
        raise RayJobError(f"RayJob name {name!r}: lowercase letters, digits and '-', "
                          "starting with a letter, at most 47 characters")
    spec: dict[str, Any] = {
        "entrypoint": shlex.join(["longmix", *cli_args]),
        "clusterSelector": {"ray.io/cluster": cluster},
        "submissionMode": "HTTPMode",
    }
    if runtime_env:
        spec["runtimeEnvYAML"] = yaml.safe_dump(runtime_env, sort_keys=False)
    if deadline_s is not None:
        spec["activeDeadlineSeconds"] = deadline_s
    return {"apiVersion": f"{GROUP}/{API_VERSION}", "kind": "RayJob",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/part-of": "longmix",
                                    "longmix.io/step": cli_args[0]}},
            "spec": spec}


def data_build_job(name: str, spec: str, out: str, *, cluster: str, namespace: str,
                   overwrite: bool = False) -> dict:
    """`longmix data build` (Ray Data) on the cluster: a corpus spec to shards under `out`."""
    args = ["data", "build", "--spec", spec, "--out", out]
    return rayjob(name, args + (["--overwrite"] if overwrite else []),
                  cluster=cluster, namespace=namespace)


def train_job(name: str, dataset: str, *, cluster: str, namespace: str, stage: str = "pretrain",
              steps: int = 200, workers: int = 2, use_gpu: bool = False,
              storage_path: str | None = None, init_from: str | None = None) -> dict:
    """`longmix train` (Ray Train) on the cluster; GPU workers land on the gpu worker group."""
    args = ["train", "--dataset", dataset, "--stage", stage, "--steps", str(steps),
            "--workers", str(workers), "--use-gpu" if use_gpu else "--no-use-gpu"]
    if storage_path:
        args += ["--storage-path", storage_path]
    if init_from:
        args += ["--init-from", init_from]
    return rayjob(name, args, cluster=cluster, namespace=namespace)


def submit(job: dict, api: Any = None) -> None:
    api = api if api is not None else custom_objects_api()
    meta = job["metadata"]
    try:
        api.create_namespaced_custom_object(GROUP, API_VERSION, meta["namespace"], PLURAL, job,
                                            field_validation="Strict")
    except Exception as error:
        raise RayJobError(f"cannot create RayJob {meta['namespace']}/{meta['name']}: "
                          f"{error}") from error


def wait(name: str, namespace: str, timeout_s: float, api: Any = None, poll_s: float = 10.0,
         clock: Callable[[], float] = time.monotonic,
         sleep: Callable[[float], None] = time.sleep) -> dict:
    """The RayJob's status once it finished with SUCCEEDED; RayJobError otherwise."""
    api = api if api is not None else custom_objects_api()
    deadline = clock() + timeout_s
    while True:
        status = api.get_namespaced_custom_object(GROUP, API_VERSION, namespace, PLURAL,
                                                  name).get("status") or {}
        deployment, job = status.get("jobDeploymentStatus"), status.get("jobStatus")
        if deployment in FINISHED:
            if job == "SUCCEEDED":
                return status
            raise RayJobError(f"RayJob {namespace}/{name}: {deployment}, job {job}: "
                              f"{status.get('reason', '')} {status.get('message', '')}".strip())
        if clock() >= deadline:
            raise RayJobError(f"RayJob {namespace}/{name} not finished after {timeout_s:g} s "
                              f"({deployment}, job {job})")
        sleep(poll_s)
