"""docs/schemas/ holds each contract's JSON Schema as its model generates it: a model that changes
without its schema being regenerated fails here, and what the code writes follows the schema."""

import json

import jsonschema
import pytest
from pydantic import BaseModel

from model.checkpoint import save_checkpoint
from model.config import get_preset
from model.transformer import Transformer
from pipelines import contracts


def test_every_schema_is_what_its_model_generates_now():
    assert contracts.stale() == [], "run: python -m pipelines.contracts"


def test_a_changed_model_makes_its_schema_stale(tmp_path, monkeypatch):
    contracts.write(tmp_path)
    assert contracts.stale(tmp_path) == []

    class Changed(contracts.CONTRACTS["7-deployment-record"]):
        added_field: int = 0

    monkeypatch.setitem(contracts.CONTRACTS, "7-deployment-record", Changed)
    assert contracts.stale(tmp_path) == ["7-deployment-record.json"]
    assert contracts.main(["--check"]) == 1


def test_a_checkpoint_digest_follows_its_schema(tmp_path, tokenizer):
    cfg = get_preset("tiny")
    save_checkpoint(tmp_path / "ckpt", Transformer(cfg), tokenizer)
    schema = json.loads((contracts.SCHEMA_DIR / "3-checkpoint-digest.json").read_text())
    record = json.loads((tmp_path / "ckpt" / "digest.json").read_text())
    jsonschema.validate(record, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"files": record["files"]}, schema)  # no format_version


@pytest.mark.parametrize("stem", [s for s, k in contracts.CONTRACTS.items()
                                  if isinstance(k, type) and issubclass(k, BaseModel)])
def test_each_pydantic_contract_names_its_required_fields(stem):
    schema = json.loads((contracts.SCHEMA_DIR / f"{stem}.json").read_text())
    required = {name for name, field in contracts.CONTRACTS[stem].model_fields.items()
                if field.is_required()}
    assert set(schema.get("required", [])) == required
