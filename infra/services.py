"""The embedded default's background services: Prefect's server and the MLflow UI.

Each runs as its own process that outlives the command that started it, so the URLs that
`longmix run` prints keep working after it returns; `<home>/services/<name>.json` records its
pid and URL, its log is beside it, and `longmix down` stops it. Where settings name a Prefect
API (PREFECT_API_URL) or an MLflow server, those are used and nothing is started."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import psutil

from infra.secret_files import secret_file
from infra.settings import Settings

PREFECT_AUTH_FILE = "prefect-auth"


class ServiceError(RuntimeError):
    """A service did not start; the message names it and its log."""


@dataclass(frozen=True)
class Service:
    name: str
    pid: int
    url: str
    started: float  # the process's start time (psutil): a reused pid has another

def _record(settings: Settings, name: str) -> Path:
    return settings.home.resolve() / "services" / f"{name}.json"


# psutil's create time is the boot time plus the process's start in ticks since boot, and the
# kernel derives the boot time from the wall clock: when the clock is adjusted, the create time
# of the same process read later moves with it (whole seconds here, within hours), which made
# live services look gone (started again beside the first; `longmix down` left them running).
# A pid given to another process later differs by far more: the service's lifetime at least.
CREATE_TIME_SLACK_S = 60.0


def process_alive(pid: int, started: float) -> bool:
    """Whether the process runs and is the one that started at `started` (its psutil create
    time, give or take CREATE_TIME_SLACK_S), not another that was given the same pid later."""
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is this process's child that has ended
    except ChildProcessError:
        pass  # not a child of this process
    try:
        process = psutil.Process(pid)
        return (process.status() != psutil.STATUS_ZOMBIE
                and abs(process.create_time() - started) < CREATE_TIME_SLACK_S)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # alive, another user's


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def running(settings: Settings, name: str) -> Service | None:
    path = _record(settings, name)
    if not path.is_file():
        return None
    try:
        service = Service(**json.loads(path.read_text()))
    except (TypeError, ValueError):  # written by an older longmix, without the start time
        return None
    return service if process_alive(service.pid, service.started) else None


def free_port(host: str = "127.0.0.1", preferred: int = 0) -> int:
    """`preferred` if it is free on `host`, else any free port: known before a server starts."""
    with socket.socket() as s:
        try:
            s.bind((host, preferred))
        except OSError:  # taken: any free port
            s.bind((host, 0))
        return s.getsockname()[1]


def start(settings: Settings, name: str, argv: list[str], health: str, env: dict[str, str],
          preferred_port: int = 0, timeout_s: float = 90.0) -> Service:
    """Start `argv` (with {port} filled in: `preferred_port` if free, else any free port) in its
    own session; wait until `health` answers."""
    port = free_port(preferred=preferred_port)
    path = _record(settings, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = path.with_suffix(".log")
    with open(log, "ab") as out:
        proc = subprocess.Popen([a.format(port=port) for a in argv], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **env},
                                start_new_session=True)  # not stopped by the caller's Ctrl-C
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while not _healthy(url + health):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise ServiceError(f"{name} did not start on {url}; see {log}")
        time.sleep(0.5)
    service = Service(name, proc.pid, url, psutil.Process(proc.pid).create_time())
    path.write_text(json.dumps(asdict(service)))
    return service


def stop(settings: Settings, name: str) -> bool:
    service = running(settings, name)
    _record(settings, name).unlink(missing_ok=True)
    if service is None:
        return False
    os.killpg(service.pid, signal.SIGTERM)  # the server and the workers it spawned
    return True


def _script(name: str) -> str:
    """A console script of this environment (the venv's, not whatever is first on PATH)."""
    return str(Path(sys.executable).with_name(name))


def prefect_auth_string(settings: Settings) -> str:
    """The Prefect API's basic-auth "user:password": PREFECT_API_AUTH_STRING when set (a server
    of your own), else the embedded server's, made once in <home>/keys/prefect-auth."""
    return os.environ.get("PREFECT_API_AUTH_STRING") or secret_file(
        settings.home.resolve() / "keys" / PREFECT_AUTH_FILE,
        lambda: f"longmix:{secrets.token_urlsafe(24)}")


def prefect_env(settings: Settings, api_url: str | None = None) -> dict[str, str]:
    """Prefect's settings for the embedded default, as environment variables: its home and
    persisted results under ours, no analytics, basic auth on the server and from its clients;
    the API to use when given."""
    home = settings.home.resolve() / "prefect"
    auth = prefect_auth_string(settings)
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOCAL_STORAGE_PATH": str(home / "results"),
           "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
           "PREFECT_SERVER_API_AUTH_STRING": auth, "PREFECT_API_AUTH_STRING": auth}
    return {**env, "PREFECT_API_URL": api_url} if api_url else env


def ensure_prefect_server(settings: Settings) -> str:
    """The Prefect API URL: PREFECT_API_URL when set, else our local server (started if needed)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    service = running(settings, "prefect") or start(
        settings, "prefect", [_script("prefect"), "server", "start", "--host", "127.0.0.1",
                              "--port", "{port}"],
        "/api/health", prefect_env(settings), settings.prefect_port)
    return f"{service.url}/api"


def ensure_mlflow_ui(settings: Settings) -> str:
    """The MLflow server's URL: the tracking server when one is configured, else a local one
    over the same SQLite store and artifact folder (started if needed), which asks everyone to
    log in and enforces the promotion's rules (the longmix-auth app, infra/mlflow_auth.py)."""
    from infra.mlflow_accounts import ADMIN, password_file, provision_embedded, server_env

    if settings.tracking_uri.startswith("http"):
        return settings.tracking_uri
    service = running(settings, "mlflow")
    if service is not None and not password_file(settings, ADMIN).is_file():
        stop(settings, "mlflow")  # started by an older longmix, without accounts
        service = None
    if service is None:
        service = start(
            settings, "mlflow", [_script("mlflow"), "server", "--host", "127.0.0.1",
                                 "--port", "{port}", "--backend-store-uri", settings.tracking_uri,
                                 "--default-artifact-root", settings.artifact_root,
                                 "--workers", "1", "--app-name", "longmix-auth"],
            "/health", server_env(settings), settings.mlflow_port)
        provision_embedded(settings, service.url)
    return service.url


@contextmanager
def prefect_settings(settings: Settings, api_url: str):
    """The same settings for this process, where Prefect was imported already (it reads the
    environment once): flows run inside this context use them. Its home is fixed by then."""
    import prefect.settings
    from prefect.settings import temporary_settings

    env = prefect_env(settings, api_url)
    env.pop("PREFECT_HOME")
    with temporary_settings(updates={getattr(prefect.settings, k): v for k, v in env.items()}):
        yield
