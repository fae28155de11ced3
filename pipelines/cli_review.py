"""The reviewer's and operator's commands: `status`, `card`, `approve`, `reject`, `deploy`,
`rollback` and `audit verify`. Each is the same call the flows make, so the CLI and the flows
share every rule."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from pipelines.cli_options import refuse

console = Console()
audit_app = typer.Typer(help="the signed, hash-chained audit log", no_args_is_help=True)
accounts_app = typer.Typer(help="MLflow accounts: the embedded server's, or as a server's admin",
                            no_args_is_help=True)


def _client():
    from infra.tracking import registry_client

    return registry_client()


def _version(ref: str) -> tuple[str, str]:
    name, _, version = ref.rpartition("/")
    if not name or not version.isdigit():
        refuse(f"{ref!r}: expected NAME/VERSION, e.g. longmix/3", 2)
    return name, version


def _me():
    """(the registry as you, your account's name): who MLflow authenticates you as (your
    MLFLOW_TRACKING_USERNAME and _PASSWORD, or on the embedded default your OS user's account);
    never a name typed into a field."""
    from infra.mlflow_accounts import AccountError, acting
    from infra.settings import get_settings

    try:
        return acting(get_settings())
    except AccountError as e:
        refuse(e)


def card(version: str = typer.Argument(..., help="NAME/VERSION, e.g. longmix/3")) -> None:
    """Show a version's model card (what an approval approves) and its digest."""
    from rich.markdown import Markdown

    from pipelines.model_card import CARD_DIGEST_TAG

    name, number = _version(version)
    model_version = _client().get_model_version(name, number)
    if CARD_DIGEST_TAG not in model_version.tags:
        refuse(f"{name}/{number} has no model card ({CARD_DIGEST_TAG} tag): the pipeline writes "
               "one after the gate")
    console.print(Markdown(model_version.description or ""))
    console.print(f"model card digest: {model_version.tags[CARD_DIGEST_TAG]}", highlight=False)


def approve(
    version: str = typer.Argument(..., help="NAME/VERSION, e.g. longmix/3"),
    reason: str | None = typer.Option(None, help="why (recorded in the receipt)"),
    digest: str | None = typer.Option(None, help="the digest you reviewed (default: the version's "
                                      "longmix.digest as it is now)"),
) -> None:
    """Approve a version that passed the gate, and its model card as it is now (`longmix card`),
    as your MLflow account (one in the reviewers role, not the one that triggered the run): a
    waiting flow picks it up and deploys it."""
    _review(version, "approve", reason, digest)


def reject(
    version: str = typer.Argument(..., help="NAME/VERSION"),
    reason: str = typer.Option(..., help="why it must not be deployed"),
) -> None:
    """Reject a version, as your MLflow account: the waiting flow stops with your reason."""
    _review(version, "reject", reason)


def _review(version: str, decision: str, reason: str | None, digest: str | None = None) -> None:
    """Write the longmix.review tag, as a reviewer in the MLflow UI would."""
    from mlflow.exceptions import MlflowException

    from pipelines.approval import ApprovalError, review

    name, number = _version(version)
    client, me = _me()
    try:
        value = review(client, name, number, decision, me, reason=reason, digest=digest)
    except (ApprovalError, MlflowException) as e:
        refuse(e)
    console.print(f"{name} version {number}: longmix.review = {value}", highlight=False)


def override(
    version: str = typer.Argument(..., help="NAME/VERSION whose gate decision failed"),
    check: str = typer.Option(..., help="the failed check to accept (never a hard safety check)"),
    reason: str = typer.Option(..., help="why the failure is acceptable (recorded)"),
) -> None:
    """Accept one failed non-safety check of a version's gate decision, as your MLflow account,
    with a reason; the flow, run again, keeps the override for the same report and policy."""
    from infra.settings import get_settings
    from pipelines.gate.decide import GateError
    from pipelines.gate.record import override_check

    name, number = _version(version)
    try:
        decision = override_check(_client(), name, number, check, _me()[1], reason,
                                  get_settings())
    except GateError as e:
        refuse(e)
    console.print(f"{name} version {number}: {check} overridden; gate {decision.status}",
                  highlight=False)


def deploy(version: str = typer.Argument(..., help="NAME/VERSION of an approved version")) -> None:
    """Blue/green deploy of an approved version (the approval is checked again first)."""
    from infra.settings import get_settings
    from pipelines.approval import ApprovalError, check_approved
    from pipelines.deploy import DeployError
    from pipelines.deploy import deploy as blue_green

    name, number = _version(version)
    settings = get_settings()
    client = _client()
    try:
        receipt = check_approved(client, name, number, settings)
        with console.status(f"deploying {name} version {number}: candidate, smoke check, switch"):
            record = blue_green(client, name, number, settings, approved_digest=receipt.digest,
                                approval_hash=receipt.audit_hash, actor=_me()[1])
    except (ApprovalError, DeployError) as e:
        refuse(e)
    console.print(f"{name} version {record.version} serves at {record.endpoint}/v1"
                  + (f"; rollback target: version {record.rollback_target.version}"
                     if record.rollback_target else ""), highlight=False)


def rollback(model: str = typer.Option("longmix", help="registered model name")) -> None:
    """Serve the previous version again (blue/green, smoke-checked), and move `champion` back."""
    from infra.settings import get_settings
    from pipelines.deploy import DeployError
    from pipelines.deploy import rollback as roll_back

    settings = get_settings()
    try:
        with console.status(f"rolling {model} back"):
            record = roll_back(_client(), model, settings, actor=_me()[1])
    except DeployError as e:
        refuse(e)
    console.print(f"{model} version {record.version} serves again at {record.endpoint}/v1",
                  highlight=False)


def status(model: str = typer.Option("longmix", help="registered model name"),
           digests: bool = typer.Option(False, "--digests",
                                        help="whole digests (for serving.modelDigest)")) -> None:
    """The versions with their gate, approval and deploy state; what serves; the services."""
    from mlflow.exceptions import MlflowException

    from infra import services
    from infra.settings import get_settings
    from pipelines.deploy import current_deployment
    from workers.serve.host import running_host

    settings = get_settings()
    client = _client()
    table = Table(title=f"{model}: versions")
    for col in ("version", "digest", "stage", "gate", "approval", "deploy", "aliases"):
        table.add_column(col)
    try:
        versions = client.search_model_versions(f"name = '{model}'")
    except MlflowException:
        versions = []
    for v in sorted(versions, key=lambda v: int(v.version)):
        t = v.tags
        digest = t.get("longmix.digest", "")
        table.add_row(str(v.version), digest if digests else digest[:12],
                      t.get("longmix.stage", ""), t.get("gate.status", ""),
                      t.get("approval.status", "")
                      + (f" by {t['approval.reviewer']}" if "approval.reviewer" in t else ""),
                      t.get("deploy.status", ""), ", ".join(v.aliases))
    console.print(table)
    record = current_deployment(settings, model)
    console.print(f"serving: version {record.version} at {record.endpoint}/v1 since {record.since}"
                  + (f", rollback target version {record.rollback_target.version}"
                     if record.rollback_target
                     else "") if record else "serving: nothing deployed", highlight=False)
    for name in ("prefect", "mlflow"):
        found = services.running(settings, name)
        console.print(f"{name}: {found.url if found else 'not running (longmix ui)'}", highlight=False)
    host = running_host(settings)
    console.print(f"serving host: {'running' if host else 'not running'}")


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the audit log: every record's hash and signature (against the public key), the chain,
    the signed head (a removed tail is named), and that every record the registry names is in it."""
    from infra.settings import get_settings
    from pipelines.audit import AuditError, audit_log, referenced_hashes

    settings = get_settings()
    referenced = referenced_hashes(_client())
    try:
        records = audit_log(settings).verify(referenced)
    except AuditError as e:
        refuse(e)
    last = f"seq {records[-1].seq} {records[-1].hash[:12]}" if records else "none"
    console.print(f"audit log {settings.audit_uri}: {len(records)} records, chain intact, "
                  f"every signature valid (public key {settings.audit_public_key}), all "
                  f"{len(referenced)} hashes the registry holds present; head {last}",
                  highlight=False)


@audit_app.command("show")
def audit_show(last: int = typer.Option(20, help="how many of the latest records")) -> None:
    """The latest audit records: what happened, to which version, by whom."""
    from infra.settings import get_settings
    from pipelines.audit import audit_log

    table = Table(title="audit log")
    for col in ("seq", "at", "event", "actor", "model", "hash"):
        table.add_column(col)
    for r in audit_log(get_settings()).records()[-last:]:
        table.add_row(str(r.seq), r.at, r.event, r.actor, r.model or "", r.hash[:12])
    console.print(table)


class ExperimentPermission(str, Enum):
    READ = "READ"
    EDIT = "EDIT"
    MANAGE = "MANAGE"


@accounts_app.command("add")
def accounts_add(
    name: str = typer.Argument(..., help="the account's user name"),
    reviewer: bool = typer.Option(False, help="put it in the reviewers role (may approve)"),
    password_file: Path | None = typer.Option(
        None, exists=True, dir_okay=False,
        help="the account's password (a server of your own; never on the embedded one)"),
    permission: ExperimentPermission | None = typer.Option(
        None, help="its permission on every experiment (default: the server's default)"),
) -> None:
    """Make an MLflow account, or bring one that exists to these settings.

    On the embedded server its password is generated into a file of mode 0600 under
    LONGMIX_HOME (never printed): give it to the person it is for, who logs in to the MLflow UI
    with it or sets MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD. On a configured server
    (LONGMIX_MLFLOW_TRACKING_URI=http://...) you act as its admin (your MLFLOW_TRACKING_USERNAME
    and _PASSWORD), and the password is the content of --password-file, set again on an account
    that exists."""
    from infra.mlflow_accounts import AccountError, provision, server_account
    from infra.mlflow_accounts import password_file as generated_file
    from infra.services import ensure_mlflow_ui
    from infra.settings import get_settings

    settings = get_settings()
    grant = permission.value if permission else None
    try:
        if settings.mlflow_tracking_uri is None:
            if password_file is not None:
                refuse(ValueError("on the embedded MLflow server each password is generated "
                                   "into its own file: leave out --password-file"), 2)
            provision(settings, ensure_mlflow_ui(settings), name, reviewer, permission=grant)
            where = f"password in {generated_file(settings, name)}"
        else:
            server = server_account(settings)
            if server is None:
                refuse(ValueError(f"{settings.tracking_uri} is a store without a server: it "
                                   "has no accounts"), 2)
            if password_file is None:
                refuse(ValueError("on a configured MLflow server the account's password comes "
                                   "from --password-file (none is generated here)"), 2)
            url, admin, admin_password = server
            provision(settings, url, name, reviewer, admin=(admin, admin_password),
                      secret=_password_in(password_file), permission=grant)
            where = f"password from {password_file}"
    except AccountError as e:
        refuse(e)
    console.print(f"MLflow account {name}" + (" (reviewer)" if reviewer else "")
                  + (f", {grant} on experiments" if grant else "") + f": {where}",
                  highlight=False)


def _password_in(path: Path) -> str:
    """The password in `path`, byte for byte: the pods that log in with it send a Secret's value
    as it is, so a trailing line break would be part of theirs and not of this one."""
    secret = path.read_text()
    if not secret or secret != secret.strip():
        refuse(ValueError(f"{path}: the password is empty or begins or ends with white space "
                           "(a line break?); write it without (printf '%s' ...)"), 2)
    return secret
