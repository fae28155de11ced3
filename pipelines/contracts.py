"""The contracts between the steps (docs/contracts.md), each as the model that reads and writes
it, and its JSON Schema under docs/schemas/, generated from that model.

    python -m pipelines.contracts          # rewrite docs/schemas/ after a model changed
    python -m pipelines.contracts --check  # exit 1 if a schema is stale (the suite checks this)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import TypeAdapter

from model.checkpoint import DigestRecord
from pipelines.approval import ApprovalReceipt
from pipelines.audit import AuditHead, AuditRecord
from pipelines.deploy import DeploymentRecord
from pipelines.gate.decide import GateDecision
from pipelines.lineage import Lineage
from workers.data.manifest import Manifest
from workers.data.spec import CorpusSpec
from workers.evals.report import EvalReport

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "docs" / "schemas"

# file stem -> the type it describes; the number is the contract's in docs/contracts.md
CONTRACTS: dict[str, type] = {
    "1-corpus-spec": CorpusSpec,
    "2-dataset-manifest": Manifest,
    "3-checkpoint-digest": DigestRecord,
    "4-eval-report": EvalReport,
    "5-gate-decision": GateDecision,
    "6-approval-receipt": ApprovalReceipt,
    "6-audit-record": AuditRecord,
    "6-audit-head": AuditHead,
    "7-deployment-record": DeploymentRecord,
    "lineage": Lineage,
}


def schema_text(kind: type) -> str:
    schema = TypeAdapter(kind).json_schema()
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def stale(folder: Path = SCHEMA_DIR) -> list[str]:
    """The schema files that differ from what their models generate now (or are missing)."""
    return [f"{stem}.json" for stem, kind in CONTRACTS.items()
            if not (folder / f"{stem}.json").is_file()
            or (folder / f"{stem}.json").read_text() != schema_text(kind)]


def write(folder: Path = SCHEMA_DIR) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, kind in CONTRACTS.items():
        (folder / f"{stem}.json").write_text(schema_text(kind))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale schemas")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale()
        for name in out_of_date:
            print(f"docs/schemas/{name} is stale: run python -m pipelines.contracts")
        return 1 if out_of_date else 0
    write()
    print(f"wrote {len(CONTRACTS)} schemas to {SCHEMA_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
