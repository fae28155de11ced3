"""MLflow accounts: who a person or the pipeline is to the registry (docs/security.md).

The embedded default's MLflow server runs the `longmix-auth` app (infra/mlflow_auth.py): basic
auth with an admin, the pipeline's service account, the OS user's own account and, for the
`demo` and `tiny` profiles, `demo-reviewer`, a second account in the reviewers role. Each
password is generated into `<home>/keys/mlflow/<account>` (mode 0600) and never printed. On a
server of one's own (the Helm chart's), an admin makes the accounts with the same `provision`,
each password given (`longmix accounts add NAME --password-file FILE`).

`whoami` is the identity the promotion compares (four eyes) and records: the account MLflow
authenticated, never a name typed into a field. Only a store without a server (a SQLite file
named in LONGMIX_MLFLOW_TRACKING_URI, as in tests) has no accounts: there it is the settings'
user, and the store's owner can write anything."""

from __future__ import annotations

import getpass
import os
import re
import secrets
from pathlib import Path

import httpx

from infra.secret_files import secret_file
from infra.settings import Settings

ADMIN = "admin"
DEMO_REVIEWER = "demo-reviewer"
WORKSPACE = "default"  # roles live in a workspace; without workspaces, in MLflow's default one
OWN_ROLE = re.compile(r"__user_\d+__")  # the role MLflow keeps one user's own grants in


class AccountError(RuntimeError):
    """An account could not be made or authenticated; the message says which and why."""


def password_file(settings: Settings, account: str) -> Path:
    return settings.home.resolve() / "keys" / "mlflow" / account


def password(settings: Settings, account: str) -> str:
    """The embedded default's password for `account`, generated at first use."""
    return secret_file(password_file(settings, account), lambda: secrets.token_urlsafe(24))


def server_env(settings: Settings) -> dict[str, str]:
    """The environment of the embedded MLflow server: its auth config (users in a SQLite file
    under home; every account may edit what the rules leave open), the admin's password and the
    key its forms' CSRF tokens are signed with."""
    home = settings.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    ini = home / "mlflow-auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = EDIT\n"
                   f"database_uri = sqlite:///{home / 'mlflow-auth.db'}\n"
                   f"admin_username = {ADMIN}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                   "auth_cache_ttl_seconds = 300\n")  # a password hash costs ~0.1 s a request
    return {"MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "MLFLOW_AUTH_ADMIN_PASSWORD": password(settings, ADMIN),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_file(home / "keys" / "mlflow-flask-secret",
                                                          lambda: secrets.token_urlsafe(32)),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def _answer(response: httpx.Response, what: str, exists_ok: bool = False) -> dict:
    if exists_ok and "RESOURCE_ALREADY_EXISTS" in response.text:
        return {}
    if response.status_code != 200:
        raise AccountError(f"{what}: MLflow answered {response.status_code} "
                           f"{response.text[:300]}")
    return response.json()


def provision(settings: Settings, url: str, account: str, reviewer: bool = False, *,
              admin: tuple[str, str] | None = None, secret: str | None = None,
              permission: str | None = None) -> None:
    """Make `account` on the MLflow server at `url`, as its admin; put it in the reviewers role
    when `reviewer`; give it `permission` (READ, EDIT, MANAGE) on every experiment when set.

    The embedded default (`admin` and `secret` None): the admin's password and the account's are
    the generated files under LONGMIX_HOME, and an account that exists keeps its password. A
    server of one's own (the chart's accounts Job): `admin` is an admin's (name, password) and
    the account's password is `secret`, set again on an account that exists (a changed Secret
    takes effect at the Job's next run)."""
    with httpx.Client(base_url=url, auth=admin or (ADMIN, password(settings, ADMIN)),
                      timeout=30) as client:
        made = _answer(client.post("/api/2.0/mlflow/users/create", json={
            "username": account,
            "password": secret if secret is not None else password(settings, account)}),
            f"creating the MLflow account {account}", exists_ok=True)
        if secret is not None and not made:
            _answer(client.patch("/api/2.0/mlflow/users/update-password",
                                 json={"username": account, "password": secret}),
                    f"setting the password of {account}")
        if permission is not None:
            _grant_on_experiments(client, account, permission)
        if reviewer:
            _join_reviewers(client, account, settings.mlflow_reviewers_role)


def _grant_on_experiments(client: httpx.Client, account: str, permission: str) -> None:
    """`permission` on every experiment, those made later too: a grant on the pattern "*" in
    the account's own role (MLflow's per-user grant API), replacing another level held there."""
    grant = {"username": account, "resource_type": "experiment", "resource_id": "*"}
    held = _answer(client.get("/api/3.0/mlflow/users/permissions/list",
                              params={"username": account}), f"reading {account}'s permissions")
    current = next((p["permission"] for p in held.get("permissions", [])
                    if OWN_ROLE.fullmatch(p["role_name"]) and p["resource_type"] == "experiment"
                    and p["resource_pattern"] == "*"), None)
    if current == permission:
        return
    if current is not None:  # the grant API refuses a second grant on the same pattern
        _answer(client.post("/api/3.0/mlflow/users/permissions/revoke", json=grant),
                f"revoking {account}'s {current} on experiments")
    _answer(client.post("/api/3.0/mlflow/users/permissions/grant",
                        json={**grant, "permission": permission}),
            f"granting {account} {permission} on experiments")


def _join_reviewers(client: httpx.Client, account: str, role: str) -> None:
    """Put `account` in the reviewers role, made the first time with EDIT on registered models:
    a review is a model version's tag, which a server whose default permission is READ (the
    chart's) would let no reviewer write."""
    made = _answer(client.post("/api/3.0/mlflow/roles/create", json={
        "name": role, "workspace": WORKSPACE,
        "description": "may review (longmix.review) registered model versions"}),
        f"creating the role {role}", exists_ok=True)
    if made:
        _answer(client.post("/api/3.0/mlflow/roles/permissions/add", json={
            "role_id": made["role"]["id"], "resource_type": "registered_model",
            "resource_pattern": "*", "permission": "EDIT"}),
            f"letting {role} edit registered models")
    found = _answer(client.get("/api/3.0/mlflow/users/roles/list",
                               params={"username": account}), f"reading {account}'s roles")
    if any(r["name"] == role for r in found.get("roles", [])):
        return
    role_id = made["role"]["id"] if made else next(r["id"] for r in _answer(
        client.get("/api/3.0/mlflow/roles/list", params={"workspace": WORKSPACE}),
        "listing roles")["roles"] if r["name"] == role)
    _answer(client.post("/api/3.0/mlflow/roles/assign",
                        json={"username": account, "role_id": role_id}),
            f"putting {account} in {role}")


def provision_embedded(settings: Settings, url: str) -> None:
    """The accounts every embedded server has: the pipeline's and the OS user's own."""
    provision(settings, url, settings.mlflow_service_account)
    provision(settings, url, getpass.getuser())


def credentials(settings: Settings, account: str | None = None) -> tuple[str, str]:
    """`account`'s credentials on the embedded server; by default the caller's: the MLflow
    credentials in the environment, else the OS user's own account."""
    if account is None and os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get(
            "MLFLOW_TRACKING_PASSWORD", "")
    account = account or getpass.getuser()
    if not password_file(settings, account).is_file():
        raise AccountError(f"no MLflow account {account} here: its password file "
                           f"{password_file(settings, account)} does not exist")
    return account, password(settings, account)


def authenticate(url: str, username: str, secret: str) -> str:
    """The account MLflow authenticates with these credentials; AccountError if none."""
    response = httpx.get(f"{url}/api/2.0/mlflow/users/current", auth=(username, secret),
                         timeout=30)
    if response.status_code == 401:
        raise AccountError(f"MLflow at {url} does not accept the credentials of {username}")
    return _answer(response, f"authenticating {username}")["user"]["username"]


def host_creds(url: str, username: str, secret: str):
    from mlflow.utils.rest_utils import MlflowHostCreds

    return MlflowHostCreds(url, username=username, password=secret)


def registry_as(url: str, username: str, secret: str):
    """The model registry as this account sees it (MLflow's own REST store, its credentials
    fixed: not the process's environment, which the pipeline's account owns)."""
    from mlflow.store.model_registry.rest_store import RestStore

    return RestStore(lambda: host_creds(url, username, secret))


def tracking_as(url: str, username: str, secret: str):
    from mlflow.store.tracking.rest_store import RestStore

    return RestStore(lambda: host_creds(url, username, secret))


class AccountRegistry:
    """The registry calls a review makes (read a version, write its tag), as one account."""

    def __init__(self, url: str, username: str, secret: str):
        self.store = registry_as(url, username, secret)

    def get_model_version(self, name: str, version: str):
        return self.store.get_model_version(name, str(version))

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        from mlflow.entities.model_registry import ModelVersionTag

        self.store.set_model_version_tag(name, str(version), ModelVersionTag(key, value))


def server_account(settings: Settings, account: str | None = None) -> tuple[str, str, str] | None:
    """(url, username, password) of `account` (None: the caller) on the MLflow server that holds
    the accounts: the embedded one (started if needed), or the configured tracking server with
    the environment's credentials. None for a store without a server."""
    if settings.mlflow_tracking_uri is None:
        from infra.services import ensure_mlflow_ui

        return ensure_mlflow_ui(settings), *credentials(settings, account)
    if not settings.tracking_uri.startswith("http"):
        return None
    username = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if not username or account not in (None, username):
        raise AccountError(f"acting as {account or 'you'} on {settings.tracking_uri} needs "
                           "that account's MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    return settings.tracking_uri, username, os.environ.get("MLFLOW_TRACKING_PASSWORD", "")


def acting(settings: Settings, account: str | None = None):
    """(the registry as the one acting, their authenticated name): the caller (`account` None)
    or, on the embedded server, the named account. A store without a server has no accounts:
    the process's own client and the settings' user."""
    from infra.tracking import registry_client

    server = server_account(settings, account)
    if server is None:
        return registry_client(settings), account or settings.username
    return AccountRegistry(*server), authenticate(*server)


def demo_reviewer(settings: Settings):
    """The demo profiles' reviewer, acting as its own account (made, in the reviewers role, on
    the embedded server the first time)."""
    if settings.mlflow_tracking_uri is None:
        from infra.services import ensure_mlflow_ui

        provision(settings, ensure_mlflow_ui(settings), DEMO_REVIEWER, reviewer=True)
    return acting(settings, DEMO_REVIEWER)


def record_trigger(settings: Settings, experiment_id: str) -> str | None:
    """A run made by the caller's own account, tagged with who they are (the server refuses any
    other name): the flow reads who triggered it from this run. None where the store has no
    server (nobody can be authenticated)."""
    import time

    from mlflow.entities import RunStatus, RunTag

    from infra.mlflow_auth import TRIGGER_TAG

    server = server_account(settings)
    if server is None:
        return None
    name = authenticate(*server)
    store = tracking_as(*server)
    run = store.create_run(experiment_id, name, int(time.time() * 1000),
                           [RunTag(TRIGGER_TAG, name)], f"trigger by {name}")
    store.update_run_info(run.info.run_id, RunStatus.FINISHED, int(time.time() * 1000), None)
    return run.info.run_id
