"""Blue/green serving on local Ray Serve (the ServingTarget of pipelines/deploy.py): each model
version its own Serve application `longmix-v<N>` under the route prefix `/longmix-v<N>`, on the
serving host's Ray (workers/serve/host.py, so the endpoint outlives the deploying command), and
the router application at "/" forwarding every request to the active version."""

from __future__ import annotations

import time

import httpx
from ray import serve

from infra.settings import Settings
from workers.serve.app import start_server
from workers.serve.host import connect, start_host, with_api_key
from workers.serve.router import ROUTER_APP, VERSION_HEADER, Router, router_config

SWITCH_TIMEOUT_S = 60.0


def version_app(version: str) -> str:
    return f"longmix-v{version}"


class LocalServeTarget:
    kind = "local"

    def __init__(self, settings: Settings):
        self.host = start_host(settings)
        connect(self.host)
        port = int(self.host.url.rsplit(":", 1)[1])
        # what the replicas are given: the host's port, and a key clients keep across deploys
        self.settings = with_api_key(settings).model_copy(update={"serve_port": port})

    def start_candidate(self, model_uri: str, version: str, digest: str) -> str:
        name = version_app(version)
        return start_server(model_uri, self.settings, digest=digest, app_name=name,
                            route_prefix=f"/{name}").url

    def switch_traffic(self, version: str) -> str:
        previous = self.serving_version()
        try:
            self._route_to(version)
        except Exception:
            if previous is not None:
                self._route_to(previous)  # the serving version keeps the traffic
            raise
        return self.host.url

    def _route_to(self, version: str) -> None:
        upstream = f"{self.host.url}/{version_app(version)}"
        # same code, new user_config: Serve reconfigures the live router replica in place
        config = router_config(version, upstream, self.settings.serve_max_body_bytes)
        serve.run(Router.options(user_config=config, version="router",
                                 _internal=True).bind(),
                  name=ROUTER_APP, route_prefix="/")
        self._wait_until_answered_by(version)

    def _wait_until_answered_by(self, version: str) -> None:
        deadline = time.monotonic() + SWITCH_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                reply = httpx.get(f"{self.host.url}/healthz", timeout=5)
                if reply.headers.get(VERSION_HEADER) == version:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the router at {self.host.url} did not switch to version {version} "
                           f"in {SWITCH_TIMEOUT_S:.0f} s")

    def stop(self, version: str) -> None:
        name = version_app(version)
        if name in serve.status().applications:
            serve.delete(name)  # blocks until its replicas have drained their requests

    def serving_version(self) -> str | None:
        if ROUTER_APP not in serve.status().applications:
            return None
        return serve.get_app_handle(ROUTER_APP).active_version.remote().result()
