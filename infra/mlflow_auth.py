"""The `longmix-auth` MLflow app: MLflow's basic-auth app, plus the promotion's rules enforced by
the registry itself, for every authenticated user, admins included (docs/security.md):

- a review (`longmix.review`) is set only by a user in the reviewers role, and only as
  themselves: its `by <name>` must be the authenticated user;
- a run's `longmix.triggered_by` tag names the authenticated user who set it, so a flow can
  learn who triggered it from a run that user made, never from a parameter;
- the tags the pipeline writes (`longmix.digest`, `longmix.lineage`, `gate.*`, `approval.*`,
  `audit.*`, `deploy.*`) and the `champion` alias are written or removed only by the pipeline's
  service account;
- a model version that ever served (it has `deploy.status`) or holds `champion`, or a model
  holding one, is never deleted or renamed; what the pipeline registered (`longmix.digest`) is
  deleted or renamed only by its service account;
- a review is deleted only by the reviewer who wrote it; the fields of these requests are read
  from the JSON body alone, as MLflow's handlers read them (a query string is refused).

Start it with `mlflow server --app-name longmix-auth`; the service account and the reviewers
role are the settings' `mlflow_service_account` and `mlflow_reviewers_role`."""

from __future__ import annotations

import re
from functools import cached_property

from flask import Flask, g, jsonify, request

from infra.settings import get_settings

REVIEW_TAG = "longmix.review"
TRIGGER_TAG = "longmix.triggered_by"
SERVICE_TAGS = ("longmix.digest", "longmix.lineage")  # the digest first: every version it registers
SERVICE_TAG_PREFIXES = ("gate.", "approval.", "audit.", "deploy.")
SERVICE_ALIASES = ("champion",)
SERVED_TAG = "deploy.status"  # serving | retired: the version served once
# a version tagged a prompt vanishes from MLflow's model APIs and searches (a denial of service)
PROMPT_TAGS = "mlflow.prompt."
REVIEW_BY = re.compile(r"(?:approve|reject) [0-9a-f]{12,64} by (?P<reviewer>[^\s:]+)(?::.*)?",
                       re.DOTALL)
# the REST routes (under /api/2.0/mlflow/ and /ajax-api/2.0/mlflow/) whose requests carry the
# tags, aliases and deletions above
ROUTE = re.compile(r".*/2\.0/mlflow/(?P<route>model-versions/(set-tag|delete-tag|create|delete)"
                   r"|registered-models/(alias|delete|rename)|runs/(set-tag|create|log-batch"
                   r"|delete-tag))")


def service_tag(key: str) -> bool:
    return key in SERVICE_TAGS or key.startswith(SERVICE_TAG_PREFIXES)


def tag_refusal(key: str, value: str | None, user: str, service: bool, reviewer,
                current: str | None = None) -> str | None:
    """Why `user` may not set (value) or delete (None; `current`: the tag's value now) the
    model-version tag `key`; None: may. `reviewer()`: whether `user` is in the reviewers role,
    asked only for a review (a lookup in the accounts' store)."""
    if service_tag(key) and not service:
        return f"only the pipeline's service account writes {key}"
    if key == REVIEW_TAG:
        if not reviewer():
            return f"{user} is not in the reviewers role, so cannot write {REVIEW_TAG}"
        review = (value if value is not None else current or "").strip()
        match = REVIEW_BY.fullmatch(review)
        if review and (match is None or match["reviewer"] != user):
            return (f"{REVIEW_TAG} must be a review by the authenticated user: "
                    f"'... by {user}', not {review!r}")
    return None


def run_tag_refusal(key: str, value: str | None, user: str) -> str | None:
    if key == TRIGGER_TAG and value != user:
        return f"{TRIGGER_TAG} names the authenticated user ({user}), not {value!r}"
    return None


def removal_refusal(what: str, registry: "Registry", name: str, version: str | None,
                    service: bool) -> str | None:
    """Why a version (or, `version` None, a whole model) may not be deleted or renamed: what
    served is kept, the champion is moved only by the pipeline, and what the pipeline registered
    is removed only by it."""
    if registry.served(name, version):
        return f"{what} served once: its record is kept, it cannot be deleted or renamed"
    if registry.holds_service_alias(name, version):
        return f"{what} holds the {'/'.join(SERVICE_ALIASES)} alias: only a deploy moves it"
    if registry.registered_by_pipeline(name, version) and not service:
        return f"only the pipeline's service account deletes or renames {what}, which it registered"
    return None


def request_refusal(route: str, body: dict, user: str, service: bool, reviewer,
                    registry: "Registry") -> str | None:
    """Why this registry request by `user` is refused, or None. `body`: the fields as MLflow's
    handler reads them."""
    key, value, name = body.get("key"), body.get("value"), body.get("name")
    version = None if body.get("version") is None else str(body.get("version"))
    if route in ("model-versions/set-tag", "model-versions/delete-tag", "model-versions/create"):
        keys = [key] if route != "model-versions/create" else [
            t.get("key") for t in body.get("tags") or []]
        if (not service and any(str(k).startswith(PROMPT_TAGS) for k in keys)
                and registry.registered_by_pipeline(name, None)):
            return f"{name} is the pipeline's model: its versions are not prompts"
    if route == "model-versions/set-tag":
        return tag_refusal(key, value, user, service, reviewer)
    if route == "model-versions/delete-tag":
        current = registry.version_tags(name, version).get(key)
        return tag_refusal(key, None, user, service, reviewer, current)
    if route == "model-versions/create":
        return next(filter(None, (tag_refusal(t.get("key"), t.get("value"), user, service,
                                              reviewer) for t in body.get("tags") or [])), None)
    if route == "registered-models/alias":
        if body.get("alias") in SERVICE_ALIASES and not service:
            return f"only the pipeline's service account moves the {body['alias']} alias"
        return None
    if route == "model-versions/delete":
        return removal_refusal(f"{name}/{version}", registry, name, version, service)
    if route in ("registered-models/delete", "registered-models/rename"):
        return removal_refusal(str(name), registry, name, None, service)
    if route in ("runs/set-tag", "runs/delete-tag"):
        return run_tag_refusal(key, value, user)
    tags = body.get("tags") or []  # runs/create, runs/log-batch
    return next(filter(None, (run_tag_refusal(t.get("key"), t.get("value"), user)
                              for t in tags)), None)


class Registry:
    """What the rules read, straight from the registry's tables: MLflow's search hides every
    version of a model one of whose versions is tagged as a prompt, and pages its results."""

    @cached_property
    def store(self):  # looked up only by a request whose rule reads the registry
        from mlflow.server.handlers import _get_model_registry_store

        return _get_model_registry_store()

    def _first(self, table, name: str, version: str | None, *conditions) -> bool:
        if not hasattr(self.store, "ManagedSessionMaker"):
            return True  # not a SQL registry: refuse what the rules cannot check
        with self.store.ManagedSessionMaker() as session:
            query = session.query(table).filter(table.name == name, *conditions)
            if version is not None:
                query = query.filter(table.version == int(version))
            return query.first() is not None

    def served(self, name: str, version: str | None) -> bool:
        from mlflow.store.model_registry.dbmodels.models import SqlModelVersionTag as Tag

        return self._first(Tag, name, version, Tag.key == SERVED_TAG)

    def registered_by_pipeline(self, name: str, version: str | None) -> bool:
        from mlflow.store.model_registry.dbmodels.models import SqlModelVersionTag as Tag

        return self._first(Tag, name, version, Tag.key == SERVICE_TAGS[0])

    def holds_service_alias(self, name: str, version: str | None) -> bool:
        from mlflow.store.model_registry.dbmodels.models import SqlRegisteredModelAlias as Alias

        return self._first(Alias, name, version, Alias.alias.in_(SERVICE_ALIASES))

    def version_tags(self, name: str, version: str | None) -> dict[str, str]:
        from mlflow.exceptions import MlflowException

        try:
            return dict(self.store.get_model_version(name, str(version)).tags)
        except MlflowException:
            return {}  # no such version: MLflow's own handler answers that


def _in_role(username: str, role: str) -> bool:
    from mlflow.server.auth import store

    return any(r.name == role for r in store.list_user_roles(store.get_user(username).id))


def _refuse(message: str):
    response = jsonify(error_code="PERMISSION_DENIED", message=f"longmix: {message}")
    response.status_code = 403
    return response


def enforce_promotion_rules():
    """A before-request hook, after basic-auth's: it knows who the user is by then."""
    from mlflow.server.handlers import _get_normalized_request_json

    match = ROUTE.fullmatch(request.path)
    user = getattr(g, "mlflow_authenticated_user", None)
    if match is None or user is None or request.method == "GET":
        return None
    if request.args:  # MLflow reads these routes' fields from the body alone, basic-auth not
        return _refuse(f"{request.path} takes its fields in the JSON body, not the query string")
    body = _get_normalized_request_json(request)
    if not isinstance(body, dict):
        return _refuse(f"{request.path} takes a JSON object")
    settings = get_settings()
    refusal = request_refusal(match["route"], body, user,
                              service=user == settings.mlflow_service_account,
                              # only a review asks: runs/log-batch, every training step's
                              # metrics, must not pay for it
                              reviewer=lambda: _in_role(user, settings.mlflow_reviewers_role),
                              registry=Registry())
    return None if refusal is None else _refuse(refusal)


def create_app(app: Flask | None = None):
    """The `mlflow.app` entry point: basic-auth's app with the promotion's rules after it."""
    from mlflow.server import app as mlflow_app
    from mlflow.server.auth import create_app as basic_auth_app

    flask_app = app or mlflow_app
    served = basic_auth_app(flask_app)  # registers its hooks first: they authenticate
    flask_app.before_request(enforce_promotion_rules)
    return served
