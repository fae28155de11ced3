"""The Ray Serve application: a deployment whose replicas load the model (digests verified), warm
it up with one generation, and only then build the FastAPI ingress, so a replica is ready exactly
when it can answer. The same application runs on a local Ray (127.0.0.1) or a RayService."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import SecretStr
from ray import serve

from infra.ray_runtime import ensure_ray
from infra.services import free_port
from infra.settings import Settings
from model.checkpoint import checkpoint_digest
from model.generate import SamplingParams
from model.sequence import SequenceRequest
from workers.serve.engine import BatchLimits, Engine
from workers.serve.loading import load_served_model, model_name, verify_pinned
from workers.serve.metrics import ServeMetrics
from workers.serve.openai_api import build_api
from workers.serve.request_guard import load_api_keys

APP_NAME = "longmix"
WARM_UP_TOKENS = 4


@serve.deployment(name="LongmixServer")
@serve.ingress()
class LongmixServer:
    async def __init__(self, source: str, settings: Settings, digest: str | None):
        torch.set_num_threads(max(1, int(settings.serve_replica_cpus)))  # the CPUs Ray gave it
        self.settings = settings
        self.served = load_served_model(source, settings, digest)
        self.metrics = ServeMetrics()
        self.engine = Engine(self.served.model, self.served.tokenizer,
                             BatchLimits(settings.serve_max_batch_size,
                                         settings.serve_max_batch_tokens),
                             on_step=self.metrics.on_step)
        tokenizer = self.served.tokenizer
        await self.engine.generate(SequenceRequest(  # warm-up: the replica is ready after it
            tokenizer.encode("Hello", bos=True), SamplingParams(max_new_tokens=WARM_UP_TOKENS)))

    def __serve_build_asgi_app__(self):
        keys = load_api_keys(self.settings.serve_api_keys, self.settings.serve_api_key_file)
        return build_api(self.served, self.engine, keys, self.settings.serve_max_body_bytes,
                         self.metrics)


def deployment_options(settings: Settings) -> dict:
    """Replicas (fixed, or autoscaling between serve_num_replicas and the max) and their CPUs."""
    options: dict = {"ray_actor_options": {"num_cpus": settings.serve_replica_cpus},
                     "max_ongoing_requests": 4 * settings.serve_max_batch_size}
    if settings.serve_autoscale_max_replicas is None:
        options["num_replicas"] = settings.serve_num_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": settings.serve_num_replicas,
            "max_replicas": settings.serve_autoscale_max_replicas,
            "target_ongoing_requests": settings.serve_target_ongoing_requests}
    return options


def server_app(source: str, settings: Settings, digest: str | None = None):
    """The application: LongmixServer replicas serving `source`, only if its files hash to
    `digest` when one is given (the approved digest, from the deployment record)."""
    return LongmixServer.options(**deployment_options(settings)).bind(source, settings, digest)


def build_app(args: dict):
    """The application builder that a RayService's serveConfigV2 names (import_path
    workers.serve.app:build_app, args {model: models:/NAME/VERSION, digest: the approved
    digest}); settings come from the pod's LONGMIX_* environment."""
    from infra.settings import get_settings

    return server_app(args["model"], get_settings(), args.get("digest") or None)


@dataclass(frozen=True)
class ServerInfo:
    url: str  # the base URL; the OpenAI API is under /v1
    model: str  # the id to send as "model"
    generated_key: str | None  # a key made for this run when none was configured


class DeployError(RuntimeError):
    """The application's replicas could not start (an unknown model, a damaged download, ...)."""


def _replica_failure(app_name: str) -> str | None:
    """The last line of the failed deployment's traceback: the exception and its message."""
    status = serve.status().applications.get(app_name)
    for deployment in (status.deployments.values() if status else []):
        lines = [line for line in deployment.message.splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return None


def start_server(source: str, settings: Settings, *, digest: str | None = None,
                 app_name: str = APP_NAME, route_prefix: str = "/") -> ServerInfo:
    """Deploy the application on the configured Ray (started locally if none) and wait until its
    replicas are warm. Without configured keys, a random one is made for this run. Blue/green
    deploys run each version as its own application (`app_name`) under its own `route_prefix`."""
    generated = None
    if not load_api_keys(settings.serve_api_keys, settings.serve_api_key_file):
        generated = secrets.token_urlsafe(24)
        settings = settings.model_copy(update={"serve_api_keys": [SecretStr(generated)]})
    if not source.startswith("models:/"):  # refuse a bad folder here, before deploying
        verify_pinned(source, checkpoint_digest(source), digest)
        source = str(Path(source).resolve())  # replicas may run elsewhere: absolute paths
    key_file = settings.serve_api_key_file
    settings = settings.model_copy(update={
        "home": settings.home.resolve(), "serve_api_key_file": key_file and key_file.resolve()})
    ensure_ray(settings)
    port = settings.serve_port or free_port(settings.serve_host)
    serve.start(http_options={"host": settings.serve_host, "port": port})
    try:
        serve.run(server_app(source, settings, digest),
                  name=app_name, route_prefix=route_prefix)
    except RuntimeError as error:  # a replica failed to start: say why, leave nothing behind
        reason = _replica_failure(app_name) or str(error)
        serve.delete(app_name)
        raise DeployError(f"{source}: {reason}") from None
    return ServerInfo(f"http://{settings.serve_host}:{port}{route_prefix.rstrip('/')}",
                      model_name(source, settings), generated)
