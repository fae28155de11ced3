"""Which model an eval run is about: a checkpoint folder, a registered MLflow model (fetched and
verified once, then opened by each eval task), or an OpenAI-compatible endpoint."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from infra.settings import Settings
from workers.evals.adapters import ModelAdapter
from workers.evals.endpoint_adapter import EndpointAdapter, EndpointConfig


@dataclass(frozen=True)
class ModelSpec:
    source: str  # as the user named it
    checkpoint: str | None = None  # a verified local folder
    endpoint: EndpointConfig | None = None
    digest: str | None = None  # longmix.digest of a checkpoint
    model_id: str | None = None  # the MLflow LoggedModel (m-...) when registered there

    @property
    def kind(self) -> str:
        return "endpoint" if self.endpoint else "checkpoint"


def resolve_model(source: str, settings: Settings, api_key: str | None = None,
                  endpoint_model: str | None = None) -> ModelSpec:
    from infra.registry import fetch_checkpoint
    from model.checkpoint import checkpoint_digest

    if source.startswith(("http://", "https://")):
        return ModelSpec(source, endpoint=EndpointConfig(source, endpoint_model, api_key))
    if source.startswith("models:/"):
        # every file verified against the registered digest
        folder = fetch_checkpoint(source, settings.tracking_uri, settings.home / "evals" / "models")
        return ModelSpec(source, str(folder.resolve()), digest=checkpoint_digest(folder),
                         model_id=logged_model_id(source))
    folder = Path(source)
    if not folder.is_dir():
        raise ValueError(f"--model {source}: not a checkpoint folder, models:/ URI or http(s) URL")
    return ModelSpec(source, str(folder.resolve()), digest=checkpoint_digest(folder))


def logged_model_id(uri: str) -> str | None:
    """The LoggedModel behind models:/NAME@ALIAS, models:/NAME/VERSION or models:/m-ID."""
    from infra.registry import registered_version

    version = registered_version(uri)
    if version is None:  # models:/m-ID names the LoggedModel itself
        return uri.removeprefix("models:/")
    if version.model_id:
        return version.model_id
    source = re.fullmatch(r"models:/(m-[0-9a-f]+)", version.source or "")  # registered from it
    return source[1] if source else None


def open_adapter(spec: ModelSpec, batch_size: int = 8) -> ModelAdapter:
    if spec.endpoint is not None:
        return EndpointAdapter(spec.endpoint)
    from workers.evals.local_adapter import LocalAdapter

    return LocalAdapter.from_checkpoint(spec.checkpoint, batch_size)
