"""One settings object for the embedded default and the cluster: environment variables
(LONGMIX_*), then an optional YAML file (LONGMIX_CONFIG), then defaults. Validated up front."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import Field, ValidationError
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

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

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
