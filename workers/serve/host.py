"""The serving host: a process that owns a local Ray and Ray Serve's HTTP proxy, so that what is
deployed keeps serving after the command that deployed it ends (a Ray started inside a command
dies with it). `python -m workers.serve.host` runs until SIGTERM; `start_host` starts it once
(a new session, logs to HOME/serve/host.log), `connect` attaches this process to its Ray, and
`stop_host` ends it. HOME/serve/host.json says where it is: {pid, started, ray_address, url}.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from infra.secret_files import secret_file
from infra.services import free_port, process_alive
from infra.settings import Settings
from workers.serve.request_guard import load_api_keys

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


class HostError(RuntimeError):
    """The serving host did not start, or cannot be reached."""


@dataclass(frozen=True)
class HostInfo:
    pid: int
    started: float  # the process's start time (psutil): a reused pid has another
    ray_address: str  # the host's Ray (GCS address), for ray.init(address=...)
    url: str  # Serve's HTTP proxy: http://HOST:PORT


def serve_dir(settings: Settings) -> Path:
    return settings.home.resolve() / "serve"


def _info_path(settings: Settings) -> Path:
    return serve_dir(settings) / "host.json"


def running_host(settings: Settings) -> HostInfo | None:
    """The host serving from this home, if its process is alive."""
    try:
        info = HostInfo(**json.loads(_info_path(settings).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return info if process_alive(info.pid, info.started) else None


def start_host(settings: Settings) -> HostInfo:
    """The running host, or a new one started and waited for (its Ray and proxy up)."""
    if (info := running_host(settings)) is not None:
        return info
    folder = serve_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    _info_path(settings).unlink(missing_ok=True)
    port = settings.serve_port or free_port(settings.serve_host)  # known before it starts
    command = [sys.executable, "-m", "workers.serve.host", "--home", str(settings.home.resolve()),
               "--host", settings.serve_host, "--port", str(port),
               "--object-store-mb", str(settings.ray_object_store_mb)]
    if settings.ray_num_cpus:
        command += ["--num-cpus", str(settings.ray_num_cpus)]
    log = folder / "host.log"
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        info = running_host(settings)
        if info is not None and info.pid == process.pid:
            return info
        if process.poll() is not None:
            raise HostError(f"the serving host exited with {process.returncode}; "
                            f"see {log}:\n{_tail(log)}")
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # not left half-started: its own session, its group
    raise HostError(f"the serving host did not start in {START_TIMEOUT_S:.0f} s; see {log}")


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def connect(info: HostInfo) -> None:
    """Attach this process to the host's Ray. A process holds one Ray connection: an embedded
    Ray this process started (for training or evals) is shut down first; it would die with the
    process anyway, while the host's outlives it."""
    import ray

    from infra import ray_runtime  # noqa: F401  (its environment defaults: no token auth)

    if ray.is_initialized():
        if ray.get_runtime_context().gcs_address == info.ray_address:
            return
        ray.shutdown()
    ray.init(address=info.ray_address, log_to_driver=False)


def stop_host(settings: Settings) -> bool:
    """End the host (its Serve applications and Ray with it); False if none was running."""
    info = running_host(settings)
    if info is None:
        return False
    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while process_alive(info.pid, info.started) and time.monotonic() < deadline:
        time.sleep(0.2)
    if process_alive(info.pid, info.started):
        # its own session: the group is the host and what it started
        os.killpg(info.pid, signal.SIGKILL)
    _info_path(settings).unlink(missing_ok=True)
    return True


def with_api_key(settings: Settings) -> Settings:
    """Settings whose API keys are configured, or else a key file made once under
    HOME/serve/api_key (mode 0600), so clients keep their key across deploys and rollbacks."""
    if load_api_keys(settings.serve_api_keys, settings.serve_api_key_file):
        return settings
    path = serve_dir(settings) / "api_key"
    secret_file(path, lambda: secrets.token_urlsafe(32))
    return settings.model_copy(update={"serve_api_key_file": path})


def api_key(settings: Settings) -> str:
    """The key a client (the smoke check) sends: the first configured one."""
    return load_api_keys(settings.serve_api_keys, settings.serve_api_key_file)[0]


def _serve(args: argparse.Namespace) -> None:
    from ray import serve

    from infra.ray_runtime import ensure_ray

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    settings = Settings(home=Path(args.home), ray_address=None, ray_num_cpus=args.num_cpus,
                        ray_object_store_mb=args.object_store_mb)
    ensure_ray(settings)
    import ray

    serve.start(http_options={"host": args.host, "port": args.port})
    info = HostInfo(os.getpid(), psutil.Process().create_time(),
                    ray.get_runtime_context().gcs_address, f"http://{args.host}:{args.port}")
    path = _info_path(settings)
    path.with_suffix(".tmp").write_text(json.dumps(asdict(info)))
    path.with_suffix(".tmp").replace(path)  # whole or absent: readers never see half a file
    print(f"serving host {info.url} (Ray {info.ray_address}) ready", flush=True)
    while not stop.wait(1.0):  # a timed wait lets the signal handler run
        pass
    print("serving host stopping", flush=True)
    serve.shutdown()
    ray.shutdown()
    path.unlink(missing_ok=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="longmix serving host: local Ray + Serve proxy")
    parser.add_argument("--home", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--object-store-mb", type=int, default=512)
    _serve(parser.parse_args())
