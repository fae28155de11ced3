"""The eval report (contract 4, docs/contracts.md): every metric with its value, sample count and dataset; the
datasets with their digests; per-eval notes and skips; the champion's values and the deltas.
Written as report.json with figures/*.png and tables/*.json beside it."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from pydantic import BaseModel, Field

from workers.evals.config import SuiteConfig
from workers.evals.heldout import HeldOut
from workers.evals.models import ModelSpec
from workers.evals.results import EvalDataset, EvalResult, Metric

SCHEMA_VERSION = 1
REPORT_NAME = "report.json"


class ModelInfo(BaseModel):
    source: str
    kind: str  # checkpoint | endpoint
    digest: str | None
    model_id: str | None = None

    @classmethod
    def of(cls, spec: ModelSpec) -> "ModelInfo":
        return cls(source=spec.source, kind=spec.kind, digest=spec.digest, model_id=spec.model_id)


class EvalSummary(BaseModel):
    seconds: float
    skipped: str | None
    notes: list[str]
    figures: list[str]  # files beside the report
    tables: list[str]


class Comparison(BaseModel):
    metric: str
    value: float
    champion: float
    delta: float  # value - champion
    higher_is_better: bool | None
    regressed: bool  # moved in the worse direction (never for descriptive metrics)


class EvalReport(BaseModel):
    schema_version: int = SCHEMA_VERSION
    kind: str = "longmix.eval_report"
    created_at: str
    model: ModelInfo
    suite: dict
    data: dict  # name, digest, held_out
    metrics: list[Metric]
    datasets: list[EvalDataset]
    evals: dict[str, EvalSummary]
    champion: ModelInfo | None = None
    comparison: list[Comparison] = Field(default_factory=list)
    digest: str = ""  # sha256 of everything above

    def value(self, metric: str) -> float:
        return next(m.value for m in self.metrics if m.name == metric)

    def seal(self) -> "EvalReport":
        body = self.model_dump(mode="json", exclude={"digest", "created_at"})
        self.digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return self


def build_report(spec: ModelSpec, cfg: SuiteConfig, data: HeldOut,
                 results: list[EvalResult]) -> EvalReport:
    return EvalReport(
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), model=ModelInfo.of(spec),
        suite=cfg.model_dump(mode="json"),
        data={"name": data.name, "digest": data.digest, "held_out": data.held_out},
        metrics=[m for r in results for m in r.metrics],
        datasets=[d for r in results for d in r.datasets],
        evals={r.eval: EvalSummary(seconds=round(r.seconds, 2), skipped=r.skipped, notes=r.notes,
                                   figures=[f"figures/{f}" for f in r.figures],
                                   tables=[f"tables/{t}.json" for t in r.tables])
               for r in results}).seal()


def compare(report: EvalReport, champion: EvalReport) -> list[Comparison]:
    theirs = {m.name: m.value for m in champion.metrics}
    out = []
    for m in report.metrics:
        if m.name not in theirs:
            continue
        delta = m.value - theirs[m.name]
        worse = m.higher_is_better is not None and (delta < 0 if m.higher_is_better else delta > 0)
        out.append(Comparison(metric=m.name, value=m.value, champion=theirs[m.name], delta=delta,
                              higher_is_better=m.higher_is_better, regressed=worse))
    return out


def write_report(report: EvalReport, results: list[EvalResult], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    (out / "tables").mkdir(exist_ok=True)
    for r in results:
        for name, png in r.figures.items():
            (out / "figures" / name).write_bytes(png)
        for name, rows in r.tables.items():
            (out / "tables" / f"{name}.json").write_text(json.dumps(rows, indent=1, default=str))
    path = out / REPORT_NAME
    path.write_text(report.model_dump_json(indent=2))
    return path


def read_report(path: Path) -> EvalReport:
    report = EvalReport.model_validate_json(Path(path).read_text())
    if report.schema_version != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {report.schema_version}, expected "
                         f"{SCHEMA_VERSION}")
    return report
