"""Service records: `longmix down` stops the process it started, never another that was given
the same pid after it ended."""

import json
import os
import subprocess
import sys

import psutil

from infra import services
from infra.settings import Settings


def write_record(settings: Settings, name: str, pid: int, started: float) -> None:
    path = settings.home / "services" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": name, "pid": pid, "url": "http://127.0.0.1:1",
                                "started": started}))


def test_a_live_process_with_the_recorded_start_time_is_the_service(tmp_path):
    settings = Settings(home=tmp_path)
    write_record(settings, "mlflow", os.getpid(), psutil.Process().create_time())
    assert services.running(settings, "mlflow").pid == os.getpid()
    # the create time read after a wall-clock adjustment: the boot time it adds has moved
    write_record(settings, "mlflow", os.getpid(), psutil.Process().create_time() - 1.0)
    assert services.running(settings, "mlflow").pid == os.getpid()


def test_a_reused_pid_is_not_taken_for_the_service_and_is_not_killed(tmp_path):
    settings = Settings(home=tmp_path)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 start_new_session=True)
    try:  # the record names the bystander's pid, but a process that started an hour earlier
        write_record(settings, "mlflow", bystander.pid,
                     psutil.Process(bystander.pid).create_time() - 3600.0)
        assert services.running(settings, "mlflow") is None
        assert services.stop(settings, "mlflow") is False
        assert bystander.poll() is None  # still running
        assert not (settings.home / "services" / "mlflow.json").exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_a_record_without_a_start_time_is_stale(tmp_path):
    settings = Settings(home=tmp_path)
    path = settings.home / "services" / "prefect.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"name": "prefect", "pid": os.getpid(), "url": "http://x"}))
    assert services.running(settings, "prefect") is None


def test_the_embedded_prefect_server_answers_only_its_clients(tmp_path, monkeypatch):
    """Basic auth on the embedded server: a request without the password (a flow run naming its
    own reviewer, sent by anyone on the machine) is a 401; the password is made once, in a 0600
    file, and the health probe stays open. Its port taken by another program, it takes a free
    one."""
    import socket
    import stat

    import httpx

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(home=tmp_path, prefect_port=port)
        api = services.ensure_prefect_server(settings)
    try:
        assert api.startswith("http://127.0.0.1:") and f":{port}/" not in api
        auth = settings.home / "keys" / services.PREFECT_AUTH_FILE
        assert stat.S_IMODE(auth.stat().st_mode) == 0o600
        user, password = auth.read_text().strip().split(":")
        assert httpx.get(f"{api}/health", timeout=10).status_code == 200
        assert httpx.post(f"{api}/flows/filter", json={}, timeout=10).status_code == 401
        wrong = httpx.post(f"{api}/flows/filter", json={}, auth=(user, "guess"), timeout=10)
        assert wrong.status_code == 401
        assert httpx.post(f"{api}/flows/filter", json={}, auth=(user, password),
                          timeout=10).status_code == 200
        assert services.prefect_env(settings)["PREFECT_API_AUTH_STRING"] == f"{user}:{password}"
    finally:
        services.stop(settings, "prefect")
