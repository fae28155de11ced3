"""The `longmix-auth` MLflow app: MLflow's basic-auth app, plus the promotion's rules enforced by
the registry itself, for every authenticated user, admins included (docs/security.md):

- a review (`longmix.review`) is set only by a user in the reviewers role, and only as
  themselves: its `by <name>` must be the authenticated user;
- a run's `longmix.triggered_by` tag names the authenticated user who set it, so a flow can
  learn who triggered it from a run that user made, never from a parameter;
- the tags the pipeline writes (`longmix.digest`, `longmix.lineage`, `gate.*`, `approval.*`,
  `audit.*`, `deploy.*`) and the `champion` alias are written or removed only by the pipeline's
  service account;
- a model version that ever served (it has `deploy.status`), or a model holding one, is never
  deleted or renamed.

Start it with `mlflow server --app-name longmix-auth`; the service account and the reviewers
role are the settings' `mlflow_service_account` and `mlflow_reviewers_role`."""

from __future__ import annotations

import re

from flask import Flask, g, jsonify, request

from infra.settings import get_settings

REVIEW_TAG = "longmix.review"
TRIGGER_TAG = "longmix.triggered_by"
SERVICE_TAGS = ("longmix.digest", "longmix.lineage")
SERVICE_TAG_PREFIXES = ("gate.", "approval.", "audit.", "deploy.")
SERVICE_ALIASES = ("champion",)
SERVED_TAG = "deploy.status"  # serving | retired: the version served once
REVIEW_BY = re.compile(r"(?:approve|reject) [0-9a-f]{12,64} by (?P<reviewer>[^\s:]+)(?::.*)?",
                       re.DOTALL)
# the REST routes (under /api/2.0/mlflow/ and /ajax-api/2.0/mlflow/) whose requests carry the
# tags, aliases and deletions above
ROUTE = re.compile(r".*/2\.0/mlflow/(?P<route>model-versions/(set-tag|delete-tag|create|delete)"
                   r"|registered-models/(alias|delete|rename)|runs/(set-tag|create|log-batch"
                   r"|delete-tag))")


def service_tag(key: str) -> bool:
    return key in SERVICE_TAGS or key.startswith(SERVICE_TAG_PREFIXES)


def tag_refusal(key: str, value: str | None, user: str, service: bool,
                reviewer: bool) -> str | None:
    """Why `user` may not set (value) or delete (None) the model-version tag `key`; None: may."""
    if service_tag(key) and not service:
        return f"only the pipeline's service account writes {key}"
    if key == REVIEW_TAG:
        if not reviewer:
            return f"{user} is not in the reviewers role, so cannot write {REVIEW_TAG}"
        match = REVIEW_BY.fullmatch((value or "").strip())
        if value is not None and (match is None or match["reviewer"] != user):
            return (f"{REVIEW_TAG} must be a review by the authenticated user: "
                    f"'... by {user}', not {value!r}")
    return None


def run_tag_refusal(key: str, value: str | None, user: str) -> str | None:
    if key == TRIGGER_TAG and value != user:
        return f"{TRIGGER_TAG} names the authenticated user ({user}), not {value!r}"
    return None


def request_refusal(route: str, body: dict, user: str, service: bool, reviewer: bool,
                    version_tags, model_served) -> str | None:
    """Why this registry request by `user` is refused, or None. `version_tags(name, version)`
    and `model_served(name)` read the registry."""
    key, value = body.get("key"), body.get("value")
    if route == "model-versions/set-tag":
        return tag_refusal(key, value, user, service, reviewer)
    if route == "model-versions/delete-tag":
        return tag_refusal(key, None, user, service, reviewer)
    if route == "model-versions/create":
        return next(filter(None, (tag_refusal(t.get("key"), t.get("value"), user, service,
                                              reviewer) for t in body.get("tags") or [])), None)
    if route == "registered-models/alias":
        if body.get("alias") in SERVICE_ALIASES and not service:
            return f"only the pipeline's service account moves the {body['alias']} alias"
        return None
    if route == "model-versions/delete":
        if SERVED_TAG in version_tags(body.get("name"), body.get("version")):
            return (f"{body.get('name')}/{body.get('version')} served once: its record is kept, "
                    "it cannot be deleted")
        return None
    if route in ("registered-models/delete", "registered-models/rename"):
        if model_served(body.get("name")):
            return (f"{body.get('name')} has a version that served: it cannot be deleted or "
                    "renamed")
        return None
    if route in ("runs/set-tag", "runs/delete-tag"):
        return run_tag_refusal(key, value, user)
    tags = body.get("tags") or []  # runs/create, runs/log-batch
    return next(filter(None, (run_tag_refusal(t.get("key"), t.get("value"), user)
                              for t in tags)), None)


def _version_tags(name: str, version: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException
    from mlflow.server.handlers import _get_model_registry_store

    try:
        return dict(_get_model_registry_store().get_model_version(name, str(version)).tags)
    except MlflowException:
        return {}  # no such version: MLflow's own handler answers that


def _model_served(name: str) -> bool:
    from mlflow.server.handlers import _get_model_registry_store

    versions = _get_model_registry_store().search_model_versions(f"name = '{name}'")
    return any(SERVED_TAG in dict(v.tags) for v in versions)


def _in_role(username: str, role: str) -> bool:
    from mlflow.server.auth import store

    return any(r.name == role for r in store.list_user_roles(store.get_user(username).id))


def enforce_promotion_rules():
    """A before-request hook, after basic-auth's: it knows who the user is by then."""
    match = ROUTE.fullmatch(request.path)
    user = getattr(g, "mlflow_authenticated_user", None)
    if match is None or user is None or request.method == "GET":
        return None
    settings = get_settings()
    body = {**(request.get_json(force=True, silent=True) or {}), **request.args.to_dict()}
    refusal = request_refusal(match["route"], body, user,
                              service=user == settings.mlflow_service_account,
                              reviewer=_in_role(user, settings.mlflow_reviewers_role),
                              version_tags=_version_tags, model_served=_model_served)
    if refusal is None:
        return None
    response = jsonify(error_code="PERMISSION_DENIED", message=f"longmix: {refusal}")
    response.status_code = 403
    return response


def create_app(app: Flask | None = None):
    """The `mlflow.app` entry point: basic-auth's app with the promotion's rules after it."""
    from mlflow.server import app as mlflow_app
    from mlflow.server.auth import create_app as basic_auth_app

    flask_app = app or mlflow_app
    served = basic_auth_app(flask_app)  # registers its hooks first: they authenticate
    flask_app.before_request(enforce_promotion_rules)
    return served
