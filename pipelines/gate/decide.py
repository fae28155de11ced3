"""Apply a gate policy to an eval report: the gate decision (docs/contracts.md, 5), and reviewer overrides."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field

from infra.digests import json_digest
from pipelines.gate.policy import Check, GatePolicy
from workers.evals.report import EvalReport


class GateError(ValueError):
    """The gate cannot do what was asked; the message says why."""


class CheckResult(BaseModel):
    name: str
    metric: str
    hard: bool  # a safety check: no override
    threshold: str  # e.g. ">= 0.8", "<= champion + 2%"
    value: float | None
    champion: float | None
    passed: bool
    reason: str


class Override(BaseModel):
    check: str
    reviewer: str
    reason: str
    at: str


class GateDecision(BaseModel):
    kind: str = "longmix.gate_decision"
    status: Literal["passed", "failed"]
    policy: str
    policy_digest: str
    report_digest: str
    model_digest: str | None
    champion_digest: str | None
    checks: list[CheckResult]
    overrides: list[Override] = Field(default_factory=list)
    decided_at: str

    def digest(self) -> str:
        body = self.model_dump(mode="json", exclude={"decided_at"})
        return json_digest(body)


def decide(report: EvalReport, policy: GatePolicy) -> GateDecision:
    metrics = {m.name: m for m in report.metrics}
    champion = {c.metric: c.champion for c in report.comparison}
    results = [evaluate_check(c, metrics, champion, hard=False) for c in policy.checks]
    results += [evaluate_check(c, metrics, champion, hard=True) for c in policy.safety]
    return GateDecision(status="passed" if all(r.passed for r in results) else "failed",
                        policy=policy.name, policy_digest=policy.digest(),
                        report_digest=report.digest, model_digest=report.model.digest,
                        champion_digest=report.champion.digest if report.champion else None,
                        checks=results, decided_at=now())


def evaluate_check(check: Check, metrics: dict, champion: dict[str, float], hard: bool) -> CheckResult:
    def result(passed: bool, reason: str, threshold: str, value=None, champ=None) -> CheckResult:
        return CheckResult(name=check.name, metric=check.metric, hard=hard, threshold=threshold,
                           value=value, champion=champ, passed=passed, reason=reason)

    bounds = " and ".join(([f">= {check.min:g}"] if check.min is not None else []) +
                          ([f"<= {check.max:g}"] if check.max is not None else []))
    if check.metric not in metrics:
        return result(False, f"{check.metric} is not in the eval report: it cannot be verified",
                      bounds or "change")
    value = metrics[check.metric].value
    if check.min is not None and value < check.min:
        return result(False, f"{value:.4g} < min {check.min:g}", bounds, value)
    if check.max is not None and value > check.max:
        return result(False, f"{value:.4g} > max {check.max:g}", bounds, value)
    if check.change is None:
        return result(True, f"{value:.4g} within {bounds}", bounds, value)

    higher = (check.higher_is_better if check.higher_is_better is not None
              else metrics[check.metric].higher_is_better)
    if higher is None:
        return result(False, f"{check.metric} has no better direction: set higher_is_better",
                      "change", value)
    slack = f"{check.change.tolerance:.0%}" if check.change.relative else f"{check.change.tolerance:g}"
    threshold = f"{'>=' if higher else '<='} champion {'-' if higher else '+'} {slack}"
    if check.metric not in champion:
        return result(True, "no champion to compare with (first promotion)", threshold, value)
    base = champion[check.metric]
    allowed = check.change.tolerance * (abs(base) if check.change.relative else 1.0)
    worse_by = (base - value) if higher else (value - base)
    if worse_by > allowed:
        return result(False, f"{value:.4g} is worse than the champion's {base:.4g} by {worse_by:.4g} "
                      f"(allowed {allowed:.4g})", threshold, value, base)
    return result(True, f"{value:.4g} against the champion's {base:.4g}", threshold, value, base)


def override(decision: GateDecision, check: str, reviewer: str, reason: str) -> GateDecision:
    """A named reviewer accepts one failed check with a reason; never a hard safety check."""
    found = next((c for c in decision.checks if c.name == check), None)
    if found is None:
        raise GateError(f"the decision has no check {check!r}")
    if found.hard:
        raise GateError(f"{check} is a hard safety check: it cannot be overridden")
    if found.passed:
        raise GateError(f"{check} passed: there is nothing to override")
    if not reviewer.strip() or not reason.strip():
        raise GateError("an override needs the reviewer's name and a reason")
    overrides = [*decision.overrides, Override(check=check, reviewer=reviewer, reason=reason, at=now())]
    accepted = {o.check for o in overrides}
    passed = all(c.passed or c.name in accepted for c in decision.checks)
    return decision.model_copy(update={"overrides": overrides,
                                       "status": "passed" if passed else "failed"})


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
