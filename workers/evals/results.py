"""What one eval returns: metrics (value, sample count, the dataset it was measured on),
per-sample rows, figures, and the datasets themselves with their digests."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, Field


class EvalDataset(BaseModel):
    name: str  # e.g. "niah_text/pydoc-topics"
    digest: str  # sha256 of its rows (JSON, sorted keys)
    source: str  # where its content came from
    rows: list[dict] = Field(default_factory=list, exclude=True)  # logged to MLflow, not in JSON

    @classmethod
    def of(cls, name: str, source: str, rows: list[dict]) -> "EvalDataset":
        blob = json.dumps(rows, sort_keys=True, default=str).encode()
        return cls(name=name, digest=hashlib.sha256(blob).hexdigest(), source=source, rows=rows)


class Metric(BaseModel):
    name: str  # <eval>.<measure>, e.g. niah_text.accuracy
    value: float
    count: int  # samples it averages over
    dataset: str  # EvalDataset.name
    higher_is_better: bool | None = True  # None: descriptive (a fitted parameter)
    calibration_accuracy: float | None = None  # refusal metrics: the scorer's accuracy on XSTest


class EvalResult(BaseModel):
    eval: str
    metrics: list[Metric] = Field(default_factory=list)
    datasets: list[EvalDataset] = Field(default_factory=list)
    tables: dict[str, list[dict]] = Field(default_factory=dict, exclude=True)  # name -> rows
    figures: dict[str, bytes] = Field(default_factory=dict, exclude=True)  # file name -> PNG
    skipped: str | None = None  # why nothing was measured
    notes: list[str] = Field(default_factory=list)  # parts not measured, and why
    seconds: float = 0.0

    def metric(self, name: str, value: float, count: int, dataset: EvalDataset, **kw) -> None:
        self.metrics.append(Metric(name=f"{self.eval}.{name}", value=float(value), count=count,
                                   dataset=dataset.name, **kw))
