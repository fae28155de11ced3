"""The lineage of a registered version: the chain of training stages that made it, each with its
dataset, tokenizer and checkpoint and the checkpoint it started from. Recorded on the version as
a JSON artifact and the tag `longmix.lineage` (that JSON's digest), and checked whenever it is
built or read: each stage starts from the previous stage's checkpoint, every stage's dataset was
tokenized with the same tokenizer, and the chain ends at the version's own checkpoint."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from infra.digests import json_digest
from infra.registry import DIGEST_TAG

LINEAGE_TAG = "longmix.lineage"


class LineageError(ValueError):
    """A version's lineage is missing, edited, broken, or not this version's."""


class StageRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: str
    dataset: str  # the dataset's name
    dataset_digest: str  # its manifest's digest
    tokenizer_sha256: str  # the tokenizer its rows were tokenized with
    checkpoint_digest: str  # longmix.digest of the stage's final checkpoint
    init_digest: str | None  # the checkpoint it started from; None: from scratch
    run_id: str  # its MLflow run
    steps: int
    seq_len: int


class Lineage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stages: tuple[StageRecord, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _chained(self) -> "Lineage":
        first = self.stages[0]
        for i, (previous, stage) in enumerate(zip((None, *self.stages), self.stages)):
            expected = previous.checkpoint_digest if previous else None
            if stage.init_digest != expected:
                raise ValueError(f"stages[{i}] ({stage.stage}) starts from checkpoint "
                                 f"{stage.init_digest}, not the previous stage's {expected}")
            if stage.tokenizer_sha256 != first.tokenizer_sha256:
                raise ValueError(f"stages[{i}] ({stage.stage}): its dataset's tokenizer "
                                 f"{stage.tokenizer_sha256[:12]}… is not the first stage's "
                                 f"{first.tokenizer_sha256[:12]}…")
        return self

    def digest(self) -> str:
        return json_digest(self.model_dump(mode="json"))


def lineage_artifact(model_name: str, version: str) -> str:
    return f"lineage/{model_name}-v{version}.json"


def record_lineage(client, model_name: str, version: str, lineage: Lineage) -> str:
    """Log the lineage beside the version's run and tag the version with its digest; return the
    artifact's path. Refused when the chain does not end at this version's checkpoint."""
    mv = client.get_model_version(model_name, version)
    if mv.tags.get(DIGEST_TAG) != lineage.stages[-1].checkpoint_digest:
        raise LineageError(f"{model_name} version {version} has digest {mv.tags.get(DIGEST_TAG)}; "
                           f"the chain ends at {lineage.stages[-1].checkpoint_digest}")
    path = lineage_artifact(model_name, version)
    client.log_text(mv.run_id, lineage.model_dump_json(indent=2), path)
    client.set_model_version_tag(model_name, version, LINEAGE_TAG, lineage.digest())
    return path


def read_lineage(client, model_name: str, version: str) -> Lineage:
    """The lineage recorded on the version, checked: its digest is the tag's, its chain holds, and
    it ends at the version's checkpoint."""
    from mlflow.exceptions import MlflowException

    where = f"{model_name} version {version}"
    mv = client.get_model_version(model_name, version)
    tag = mv.tags.get(LINEAGE_TAG)
    if tag is None:
        raise LineageError(f"{where} has no {LINEAGE_TAG} tag: it was not trained by the pipeline")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            text = Path(client.download_artifacts(
                mv.run_id, lineage_artifact(model_name, version), tmp)).read_text()
        lineage = Lineage.model_validate_json(text)
    except (MlflowException, OSError) as e:
        raise LineageError(f"{where}: its lineage artifact is unreadable ({e})") from e
    except ValidationError as e:
        raise LineageError(f"{where}: its lineage does not hold: {e}") from None
    if lineage.digest() != tag:
        raise LineageError(f"{where}: the lineage artifact hashes to {lineage.digest()[:12]}…, "
                           f"the {LINEAGE_TAG} tag says {tag[:12]}…: it was edited")
    if lineage.stages[-1].checkpoint_digest != mv.tags.get(DIGEST_TAG):
        raise LineageError(f"{where}: its lineage ends at another checkpoint than the version's")
    return lineage
