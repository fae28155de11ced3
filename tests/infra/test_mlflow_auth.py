"""The embedded MLflow server asks everyone to log in, and enforces the promotion's rules at the
registry (the longmix-auth app): each attack below is tried as an authenticated user would try it
through MLflow's own client, and is refused with the rule it broke; what the rules allow goes
through, and nothing that was written is lost."""

import secrets
import stat
import time
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.entities.model_registry import ModelVersionTag
from mlflow.exceptions import MlflowException
from typer.testing import CliRunner

from infra import mlflow_accounts as accounts
from infra import mlflow_auth
from infra.services import ensure_mlflow_ui, stop
from infra.settings import Settings, get_settings
from pipelines.cli import app

DIGEST = "ab" * 32


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    settings = Settings(home=tmp_path_factory.mktemp("mlflow-auth-home"))
    url = ensure_mlflow_ui(settings)
    accounts.provision(settings, url, "alice", reviewer=True)
    accounts.provision(settings, url, "bob", reviewer=True)
    accounts.provision(settings, url, "mallory")
    yield settings, url
    stop(settings, "mlflow")


def client_as(server, monkeypatch, account: str) -> MlflowClient:
    """MLflow's own client, logged in as `account` (the environment its owner would set)."""
    settings, url = server
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", account)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", accounts.password(settings, account))
    return MlflowClient(url)


@pytest.fixture(scope="module")
def version(server):
    """A registered version with its digest, made by the pipeline's service account."""
    settings, url = server
    with pytest.MonkeyPatch.context() as monkeypatch:
        pipeline = client_as(server, monkeypatch, settings.mlflow_service_account)
        experiment = pipeline.create_experiment("rules")
        run = pipeline.create_run(experiment)
        pipeline.create_registered_model("guarded")
        created = pipeline.create_model_version("guarded", f"{run.info.artifact_uri}/model",
                                                run.info.run_id, tags={"longmix.digest": DIGEST})
        pipeline.set_model_version_tag("guarded", created.version, "gate.status", "passed")
    return created.version, run.info.run_id


def refused(call, message: str = "") -> None:
    """A 403; `message` names the longmix rule (MLflow's own permissions refuse without one)."""
    with pytest.raises(MlflowException, match=message or None) as error:
        call()
    assert error.value.error_code == "PERMISSION_DENIED" or "403" in str(error.value)


def test_nobody_reaches_the_registry_without_logging_in(server):
    settings, url = server
    anonymous = httpx.get(f"{url}/api/2.0/mlflow/registered-models/search")
    assert anonymous.status_code == 401
    assert httpx.get(f"{url}/health").status_code == 200  # the probe stays open
    for account in ("admin", settings.mlflow_service_account, "alice"):
        path = accounts.password_file(settings, account)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        log = (settings.home / "services" / "mlflow.log").read_text()
        assert path.read_text().strip() not in log


def test_a_reviewer_reviews_only_as_themselves(server, version, monkeypatch):
    number, _ = version
    alice = client_as(server, monkeypatch, "alice")
    refused(lambda: alice.set_model_version_tag("guarded", number, "longmix.review",
                                                f"approve {DIGEST} by bob"),
            "must be a review by the authenticated user: '... by alice'")
    alice.set_model_version_tag("guarded", number, "longmix.review", f"approve {DIGEST} by alice")
    assert alice.get_model_version("guarded", number).tags["longmix.review"].endswith("by alice")


def test_an_account_outside_the_reviewers_role_cannot_review(server, version, monkeypatch):
    number, _ = version
    mallory = client_as(server, monkeypatch, "mallory")
    refused(lambda: mallory.set_model_version_tag("guarded", number, "longmix.review",
                                                  f"approve {DIGEST} by mallory"),
            "mallory is not in the reviewers role")
    refused(lambda: mallory.delete_model_version_tag("guarded", number, "longmix.review"))


@pytest.mark.parametrize("key, value", [("approval.status", "approved"),
                                        ("approval.receipt", "0" * 64),
                                        ("gate.status", "passed"),
                                        ("longmix.digest", "cd" * 32),
                                        ("audit.head", "0" * 64)])
def test_only_the_pipeline_writes_what_the_promotion_trusts(server, version, monkeypatch, key,
                                                             value):
    """A reviewer (even one who approved) cannot mark a version approved, gated or re-digested."""
    number, _ = version
    alice = client_as(server, monkeypatch, "alice")
    refused(lambda: alice.set_model_version_tag("guarded", number, key, value),
            f"only the pipeline's service account writes {key}")
    refused(lambda: alice.delete_model_version_tag("guarded", number, key))


def test_a_version_with_the_pipelines_tags_is_made_only_by_the_pipeline(server, version,
                                                                         monkeypatch):
    _, run_id = version
    bob = client_as(server, monkeypatch, "bob")
    source = bob.get_run(run_id).info.artifact_uri + "/model"
    refused(lambda: bob.create_model_version("guarded", source, run_id,
                                             tags={"gate.status": "passed"}),
            "only the pipeline's service account writes gate.status")


def test_only_the_pipeline_moves_the_champion_alias(server, version, monkeypatch):
    """Not even the admin, whom MLflow's own permissions let do anything."""
    settings, _ = server
    number, _ = version
    admin = client_as(server, monkeypatch, "admin")
    refused(lambda: admin.set_registered_model_alias("guarded", "champion", number),
            "only the pipeline's service account moves the champion alias")
    admin.set_registered_model_alias("guarded", "candidate", number)  # other aliases: as MLflow's
    pipeline = client_as(server, monkeypatch, settings.mlflow_service_account)
    pipeline.set_registered_model_alias("guarded", "champion", number)
    admin = client_as(server, monkeypatch, "admin")
    refused(lambda: admin.delete_registered_model_alias("guarded", "champion"),
            "only the pipeline's service account moves the champion alias")
    refused(lambda: admin.delete_model_version_tag("guarded", number, "gate.status"),
            "only the pipeline's service account writes gate.status")
    assert admin.get_model_version_by_alias("guarded", "champion").version == number


def test_a_version_that_served_is_never_deleted(server, version, monkeypatch):
    """Not even by the pipeline's account or the admin: its record is what an audit reads."""
    settings, _ = server
    number, _ = version
    pipeline = client_as(server, monkeypatch, settings.mlflow_service_account)
    pipeline.set_model_version_tag("guarded", number, "deploy.status", "serving")
    for account in (settings.mlflow_service_account, "admin"):
        client = client_as(server, monkeypatch, account)
        refused(lambda c=client: c.delete_model_version("guarded", number), "served once")
        refused(lambda c=client: c.delete_registered_model("guarded"), "served once")
    assert pipeline.get_model_version("guarded", number).tags["deploy.status"] == "serving"


def test_the_rules_read_a_request_as_mlflow_does(server, version, monkeypatch):
    """Where MLflow would read a request otherwise than a naive check: fields in the query
    string (the handler reads the body, basic-auth the query string of a non-JSON DELETE), a
    version tagged as a prompt (MLflow's search then hides the model's versions), a model the
    pipeline registered renamed by someone else."""
    settings, url = server
    number, run_id = version
    pipeline = client_as(server, monkeypatch, settings.mlflow_service_account)
    pipeline.set_model_version_tag("guarded", number, "deploy.status", "serving")
    bob = httpx.Client(base_url=f"{url}/api/2.0/mlflow", auth=("bob", accounts.password(
        settings, "bob")))
    smuggled = bob.post("/model-versions/set-tag", params={"key": "x"}, json={
        "name": "guarded", "version": number, "key": "deploy.status", "value": "retired"})
    assert smuggled.status_code == 403 and "not the query string" in smuggled.text
    admin = httpx.Client(base_url=f"{url}/api/2.0/mlflow", auth=("admin", accounts.password(
        settings, "admin")))
    aside = admin.request("DELETE", "/model-versions/delete", params={"name": "x", "version": 1},
                          headers={"Content-Type": "text/plain"},
                          content=f'{{"name": "guarded", "version": "{number}"}}')
    assert aside.status_code == 403, aside.text
    bob_client = client_as(server, monkeypatch, "bob")
    refused(lambda: bob_client.set_model_version_tag(  # would hide it from MLflow's model APIs
        "guarded", number, "mlflow.prompt.is_prompt", "true"), "its versions are not prompts")
    admin_client = client_as(server, monkeypatch, "admin")
    refused(lambda: admin_client.delete_registered_model("guarded"), "served once")
    source = f"{pipeline.get_run(run_id).info.artifact_uri}/model"
    pipeline = client_as(server, monkeypatch, settings.mlflow_service_account)
    pipeline.create_registered_model("candidate")
    pipeline.create_model_version("candidate", source, run_id, tags={"longmix.digest": DIGEST})
    admin_client = client_as(server, monkeypatch, "admin")
    refused(lambda: admin_client.rename_registered_model("candidate", "renamed"),
            "only the pipeline's service account deletes or renames candidate")
    assert admin_client.get_model_version("guarded", number).tags["deploy.status"] == "serving"


def test_a_trigger_run_names_only_the_account_that_made_it(server, version, monkeypatch):
    """What the flow reads who triggered it from: nobody can make one in another's name."""
    settings, _ = server
    _, run_id = version
    mallory = client_as(server, monkeypatch, "mallory")
    experiment = mallory.get_run(run_id).info.experiment_id
    refused(lambda: mallory.create_run(experiment, tags={mlflow_auth.TRIGGER_TAG: "bob"}),
            "longmix.triggered_by names the authenticated user \\(mallory\\)")
    run = mallory.create_run(experiment)
    refused(lambda: mallory.set_tag(run.info.run_id, mlflow_auth.TRIGGER_TAG, "bob"),
            "names the authenticated user")
    made = accounts.record_trigger(settings, experiment)  # the caller: the OS user's account
    assert mallory.get_run(made).data.tags[mlflow_auth.TRIGGER_TAG] == accounts.credentials(
        settings)[0]


@pytest.fixture(scope="module")
def chart_server(tmp_path_factory):
    """An embedded server with the chart's auth config: an account without a grant may only
    read (default_permission READ), so what the accounts Job grants is all a component has."""
    settings = Settings(home=tmp_path_factory.mktemp("mlflow-chart-home"))
    embedded_env = accounts.server_env

    def chart_env(server_settings: Settings) -> dict[str, str]:
        env = embedded_env(server_settings)
        ini = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
        ini.write_text(ini.read_text().replace("default_permission = EDIT",
                                               "default_permission = READ"))
        return env

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(accounts, "server_env", chart_env)
        url = ensure_mlflow_ui(settings)
    yield settings, url
    stop(settings, "mlflow")


def test_the_accounts_job_gives_each_component_what_it_needs_and_no_more(chart_server,
                                                                         tmp_path, monkeypatch):
    """`longmix accounts add` against a configured server as its admin, as the chart's Job runs
    it (twice: the next upgrade changes a password and a grant): each account logs in with its
    password file's password; the Ray account's EDIT on experiments lets it log metrics to a
    run the service account made but not write what the promotion trusts; the serving account
    reads and cannot log; a reviewer made so can review."""
    settings, url = chart_server
    service = settings.mlflow_service_account  # exists: the embedded server made it
    monkeypatch.setenv("LONGMIX_HOME", str(tmp_path / "job-home"))
    monkeypatch.setenv("LONGMIX_MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", accounts.ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", accounts.password(settings, accounts.ADMIN))
    passwords = {}

    def add(name: str, *options: str) -> None:
        passwords[name] = secrets.token_urlsafe(18)
        (tmp_path / name).write_text(passwords[name])
        get_settings.cache_clear()
        done = CliRunner().invoke(app, ["accounts", "add", name, "--password-file",
                                        str(tmp_path / name), *options])
        get_settings.cache_clear()
        assert done.exit_code == 0, done.output
        assert passwords[name] not in done.output

    for ray_permission in ("READ", "EDIT"):
        add(service)
        add("longmix-ray", "--permission", ray_permission)
        add("longmix-serving", "--permission", "READ")
    add("carol", "--reviewer")
    for name, secret in passwords.items():
        assert accounts.authenticate(url, name, secret) == name
    with pytest.raises(accounts.AccountError, match="does not accept"):
        accounts.authenticate(url, service, accounts.password(settings, service))

    pipeline = accounts.tracking_as(url, service, passwords[service])
    experiment = pipeline.create_experiment("chart")
    run = pipeline.create_run(experiment, service, int(time.time() * 1000), [], "train")
    registry = accounts.registry_as(url, service, passwords[service])
    registry.create_registered_model("chart-model")
    version = registry.create_model_version("chart-model", f"{run.info.artifact_uri}/model",
                                            run.info.run_id).version
    loss = [Metric("loss", 2.5, int(time.time() * 1000), 1)]

    ray = accounts.tracking_as(url, "longmix-ray", passwords["longmix-ray"])
    ray.log_batch(run.info.run_id, metrics=loss, params=[], tags=[])
    refused(lambda: ray.set_tag(run.info.run_id, RunTag(mlflow_auth.TRIGGER_TAG, service)),
            "names the authenticated user \\(longmix-ray\\)")
    ray_registry = accounts.registry_as(url, "longmix-ray", passwords["longmix-ray"])
    refused(lambda: ray_registry.set_model_version_tag("chart-model", version,
                                                       ModelVersionTag("gate.status", "passed")))
    serving = accounts.tracking_as(url, "longmix-serving", passwords["longmix-serving"])
    assert serving.get_run(run.info.run_id).data.metrics == {"loss": 2.5}
    refused(lambda: serving.log_batch(run.info.run_id, metrics=loss, params=[], tags=[]))
    serving_registry = accounts.registry_as(url, "longmix-serving", passwords["longmix-serving"])
    assert serving_registry.get_model_version("chart-model", version).run_id == run.info.run_id

    review = f"approve {DIGEST} by carol"
    accounts.AccountRegistry(url, "carol", passwords["carol"]).set_model_version_tag(
        "chart-model", version, "longmix.review", review)
    assert registry.get_model_version("chart-model", version).tags["longmix.review"] == review
