"""The model registry: a longmix checkpoint folder as an MLflow 3 model, logged as a LoggedModel
(a pyfunc from code, so nothing is pickled; the folder rides along as its `checkpoint`
artifact), registered as a new version tagged with the checkpoint's digest, and fetched back
verified for serving.

The digest (`longmix.digest`, `model.checkpoint.checkpoint_digest`) is one sha256 over the
checkpoint's digest.json, which lists the sha256 of every file: it names the exact weights, config
and tokenizer, and approvals refer to it. Training, evals, serving and the pipelines all find models
here, so none of them imports another's worker package to do so.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import model as model_package
from model.checkpoint import CheckpointError, checkpoint_digest

DIGEST_TAG = "longmix.digest"
CHECKPOINT_ARTIFACT = "checkpoint"  # the pyfunc's artifact key (context.artifacts["checkpoint"])
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
RUNTIME_PACKAGES = ("mlflow", "torch", "safetensors", "tokenizers", "numpy", "pandas")


@dataclass(frozen=True)
class ModelRef:
    name: str  # registered model name
    version: int  # registered version number
    model_id: str  # the LoggedModel id, m-...
    model_uri: str  # models:/m-... (the logged model itself)
    digest: str  # sha256 of the checkpoint's digest.json

    @property
    def version_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _requirements() -> list[str]:
    """Pinned from this environment; local labels (+cpu) dropped so pip resolves them anywhere."""
    pins = []
    for name in RUNTIME_PACKAGES:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    # Unnamed string column: predict(["def f("]) and a one-column DataFrame both validate.
    # An explicit signature rather than one inferred from type hints: those carry no params.
    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]),
                          params=ParamSchema([ParamSpec("max_new_tokens", "long", 32)]))


@contextmanager
def _in_run(run_id: str):
    """Make `run_id` the active fluent run (log_model links LoggedModels to the active run)
    without changing its status: the run may still be training, or long finished."""
    import mlflow

    active = mlflow.active_run()
    if active is not None:
        if active.info.run_id != run_id:
            raise ValueError(f"run {active.info.run_id} is active in this process; end it or pass "
                             f"its id instead of {run_id}")
        yield
        return
    client = mlflow.MlflowClient()
    status = client.get_run(run_id).info.status
    try:
        with mlflow.start_run(run_id=run_id):
            yield
    finally:
        client.update_run(run_id, status=status)  # start/end_run set RUNNING, then FINISHED/FAILED


def log_checkpoint_model(checkpoint_dir: str | Path, run_id: str, *, registered_name: str,
                         tags: dict[str, str] | None = None, max_new_tokens: int = 32) -> ModelRef:
    """Log the checkpoint as a LoggedModel of run `run_id` and register it as a new version.

    The version and the LoggedModel carry `longmix.digest` plus `tags`. Runs in the driver, with
    the tracking URI already set (infra.tracking.configure_mlflow).
    """
    import mlflow

    folder = Path(checkpoint_dir)
    digest = checkpoint_digest(folder)  # refuse a damaged checkpoint before uploading it
    tags = {str(k): str(v) for k, v in (tags or {}).items()}
    if tags.get(DIGEST_TAG, digest) != digest:
        raise ValueError(f"tags[{DIGEST_TAG!r}] = {tags[DIGEST_TAG]} is not this checkpoint's "
                         f"{digest}")
    tags[DIGEST_TAG] = digest

    with tempfile.TemporaryDirectory() as tmp, _in_run(run_id), warnings.catch_warnings():
        # The model package travels with the model (code_paths), so the pyfunc loads wherever the
        # pinned requirements are installed, and with the code that wrote this checkpoint format.
        code = Path(tmp) / "model"
        shutil.copytree(Path(model_package.__file__).parent, code,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # No input example on purpose: one would make log_model load the checkpoint and generate.
        warnings.filterwarnings("ignore", message=".*input example.*")
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(PYFUNC_CODE),
            artifacts={CHECKPOINT_ARTIFACT: str(folder)}, code_paths=[str(code)],
            signature=_signature(), pip_requirements=_requirements(),
            model_config={"max_new_tokens": max_new_tokens}, tags=tags)
    registered = mlflow.register_model(info.model_uri, registered_name, tags=tags)
    return ModelRef(registered_name, int(registered.version), info.model_id, info.model_uri, digest)


def _resolve(uri: str) -> tuple[str | None, str]:
    """(its `longmix.digest` tag, where its files are) for models:/NAME/VERSION, models:/NAME@ALIAS
    or models:/m-ID. Files are fetched from the storage location: MLflow does not resolve a
    sub-path under models:/m-ID."""
    from mlflow import MlflowClient

    client = MlflowClient()
    found = registered_version(uri)
    if found is None:
        logged = client.get_logged_model(uri.removeprefix("models:/"))
        return logged.tags.get(DIGEST_TAG), logged.artifact_location
    return (found.tags.get(DIGEST_TAG),
            client.get_model_version_download_uri(found.name, found.version))


def registered_version(uri: str):
    """The registry's ModelVersion behind models:/NAME/VERSION or models:/NAME@ALIAS; None for
    models:/m-ID (a LoggedModel, not a version)."""
    from mlflow import MlflowClient

    path = uri.removeprefix("models:/")
    if re.fullmatch(r"m-[0-9a-f]+", path):
        return None
    if match := re.fullmatch(r"(.+)@([^/@]+)", path):
        return MlflowClient().get_model_version_by_alias(*match.groups())
    if match := re.fullmatch(r"(.+)/(\d+)", path):
        return MlflowClient().get_model_version(*match.groups())
    raise ValueError(f"{uri}: expected models:/NAME/VERSION, models:/NAME@ALIAS or models:/m-ID")


def fetch_checkpoint(source: str, tracking_uri: str, downloads: Path,
                     expected_digest: str | None = None) -> Path:
    """A verified checkpoint folder for `source`: a folder as it is; a models:/ URI downloaded
    (every file verified, against `expected_digest` too when given) into downloads/<the URI as
    a folder name>."""
    if not source.startswith("models:/"):
        return Path(source)
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    return download_checkpoint(source, downloads / re.sub(r"[^\w.-]+", "_",
                                                          source.removeprefix("models:/")),
                               expected_digest=expected_digest)


def download_checkpoint(model: str | ModelRef, dst: str | Path, *,
                        expected_digest: str | None = None) -> Path:
    """Fetch the checkpoint folder of a registered version into `dst` (replaced) and return `dst`.

    Every file is checked against digest.json and digest.json against the version's
    `longmix.digest` tag (so a consistent rewrite of both is caught too), and against
    `expected_digest` when given: registry tags can be edited by anyone with write access and keep
    no history, so an approval should pass the digest it approved. On any mismatch CheckpointError
    is raised and `dst` is left untouched.
    """
    import mlflow

    uri = (model.version_uri if isinstance(model, ModelRef) else model).rstrip("/")
    if not uri.startswith("models:/"):
        raise ValueError(f"{uri}: expected a models:/ URI")
    expected, location = _resolve(uri)
    if expected is None:
        raise CheckpointError(f"{uri}: no {DIGEST_TAG} tag; not logged by log_checkpoint_model, "
                              "so there is nothing to verify it against")
    if expected_digest is not None and expected_digest != expected:
        raise CheckpointError(f"{uri}: registered {DIGEST_TAG} {expected[:12]}… is not the "
                              f"expected {expected_digest[:12]}…")
    flavor = mlflow.models.get_model_info(uri).flavors["python_function"]
    relative = flavor["artifacts"][CHECKPOINT_ARTIFACT]["path"]  # artifacts/<source folder name>

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # Download next to dst and move into place only once verified: dst never holds a bad copy.
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location.rstrip('/')}/{relative}", dst_path=str(staging)))
        actual = checkpoint_digest(local)
        if actual != expected:
            raise CheckpointError(f"{uri}: digest.json hashes to {actual[:12]}…, the registered "
                                  f"{DIGEST_TAG} is {expected[:12]}…")
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(local, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dst
