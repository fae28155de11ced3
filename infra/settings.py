"""One settings object for the embedded default and the cluster: environment variables
(LONGMIX_*), then an optional YAML file (LONGMIX_CONFIG), then defaults. Validated up front."""

from __future__ import annotations

import getpass
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(ValueError):
    pass


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LONGMIX_", extra="forbid")

    home: Path = Path(".longmix")  # the embedded default's state: MLflow, caches, runs
    ray_address: str | None = None  # None: start a local Ray in this process
    ray_num_cpus: int | None = Field(None, ge=1)
    ray_object_store_mb: int = Field(512, ge=64)
    mlflow_tracking_uri: str | None = None  # None: SQLite under home
    mlflow_artifact_root: str | None = None  # None: a folder under home (or s3://...)
    mlflow_experiment: str = "longmix"
    storage_uri: str | None = None  # datasets, checkpoints, audit, deployments; None: home
    # the embedded Prefect server's and MLflow UI's ports; taken, or 0: a free one, chosen at start
    prefect_port: int = Field(4200, ge=0, le=65535)
    mlflow_port: int = Field(5000, ge=0, le=65535)
    user: str | None = None  # who acts on a store without a server (no accounts); None: OS user
    # on an MLflow server running the longmix-auth app (docs/security.md): the account the
    # pipeline writes the promotion's tags as, and the MLflow role whose users may review
    mlflow_service_account: str = "longmix-pipeline"
    mlflow_reviewers_role: str = "longmix-reviewers"

    # promotion (pipelines/): how long a flow waits for a reviewer, how long an approval holds,
    # and where an approved version is deployed
    approval_timeout_s: float = Field(3600.0, gt=0)
    approval_poll_s: float = Field(5.0, gt=0)
    approval_valid_hours: float | None = Field(None, gt=0)  # None: an approval does not expire
    # the model card's intended use, out-of-scope use and impact assessment (Markdown; may name
    # {model} and {version}); None: pipelines/templates/model_card.md
    model_card_template: Path | None = None
    # the audit log's Ed25519 keys (docs/security.md): the signing key, which only the promotion
    # step holds (None: one made under home at first use), and the public key `longmix audit
    # verify` trusts (None: the signing key's file with the suffix .pub)
    audit_signing_key_file: Path | None = None
    audit_public_key_file: Path | None = None
    deploy_target: Literal["local", "rayservice"] = "local"  # local Ray Serve, or KubeRay
    k8s_namespace: str = "longmix"  # the RayService's namespace (deploy_target=rayservice)
    k8s_rayservice: str = "longmix"  # the RayService the deployer creates or patches
    k8s_serve_url: str | None = None  # the RayService's endpoint as the deployer reaches it
    k8s_ready_timeout_s: float = Field(1800.0, gt=0)  # a new cluster may need nodes first

    # serving (workers/serve): Ray Serve's HTTP proxy, API keys, batching and body limits, replicas
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(8000, ge=0, le=65535)  # 0: a free port, chosen at start
    serve_api_keys: list[SecretStr] = []  # bearer tokens; env: a JSON list
    serve_api_key_file: Path | None = None  # one key per line (a mounted secret), added to the above
    serve_model_name: str | None = None  # the id in /v1/models; None: the registered name or folder
    serve_max_batch_size: int = Field(8, ge=1)  # sequences decoded together
    serve_max_batch_tokens: int = Field(16384, ge=1)  # KV positions the running batch may reserve
    serve_max_body_bytes: int = Field(8 * 1024 ** 2, ge=1024)
    serve_replica_cpus: float = Field(1.0, gt=0)
    serve_num_replicas: int = Field(1, ge=1)  # replicas; the minimum when autoscaling
    serve_autoscale_max_replicas: int | None = Field(None, ge=1)  # set: autoscale between the two
    serve_target_ongoing_requests: float = Field(8.0, gt=0)  # autoscaling's per-replica target

    @model_validator(mode="after")
    def _replica_bounds(self) -> "Settings":
        top = self.serve_autoscale_max_replicas
        if top is not None and top < self.serve_num_replicas:
            raise ValueError(f"serve_autoscale_max_replicas={top} is below "
                             f"serve_num_replicas={self.serve_num_replicas}")
        return self

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def storage_root(self) -> str:
        return self.storage_uri.rstrip("/") if self.storage_uri else str(self.home.resolve())

    @property
    def audit_uri(self) -> str:
        return f"{self.storage_root}/audit"

    @property
    def audit_signing_key(self) -> Path:
        return self.audit_signing_key_file or self.home.resolve() / "keys" / "audit-signing.key"

    @property
    def audit_public_key(self) -> Path:
        return self.audit_public_key_file or self.audit_signing_key.with_suffix(".pub")

    @property
    def deployments_uri(self) -> str:
        return f"{self.storage_root}/deployments"

    @property
    def username(self) -> str:
        return self.user or getpass.getuser()

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> str:
        return self.mlflow_artifact_root or str((self.home / "mlartifacts").resolve())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    file_values = {}
    config = os.environ.get("LONGMIX_CONFIG")
    if config:
        try:
            file_values = yaml.safe_load(Path(config).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise SettingsError(f"LONGMIX_CONFIG={config}: {e}") from e
    try:
        env = Settings()  # environment variables win over the file
        return Settings(**{**file_values, **env.model_dump(exclude_unset=True)})
    except ValidationError as e:
        raise SettingsError(f"invalid settings: {e}") from None
