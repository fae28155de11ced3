"""Gate policies: absolute thresholds, change thresholds against the champion (absolute or
relative, in the metric's better direction, as TFX's Evaluator does), and hard safety checks.

A policy is YAML, validated before any gate runs; `default` and `demo` are built in.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from infra.digests import json_digest

BUILTIN = Path(__file__).parent / "policies"


class PolicyError(ValueError):
    """The policy cannot be used; the message names the file and the field."""


class Change(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tolerance: float = Field(0.0, ge=0)  # how much worse than the champion is still a pass
    relative: bool = False  # tolerance as a fraction of the champion's value


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_.-]+$")
    metric: str  # a metric name of the eval report, e.g. niah_text.rank_top1
    min: float | None = None
    max: float | None = None
    change: Change | None = None
    higher_is_better: bool | None = None  # default: what the report says of the metric

    @model_validator(mode="after")
    def _has_a_threshold(self) -> "Check":
        if self.min is None and self.max is None and self.change is None:
            raise ValueError(f"check {self.name}: give min, max or change")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"check {self.name}: min {self.min} > max {self.max}")
        return self


class GatePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    checks: list[Check] = Field(default_factory=list)  # a reviewer may override a failure
    safety: list[Check] = Field(default_factory=list)  # hard: a failure cannot be overridden

    @model_validator(mode="after")
    def _unique_names(self) -> "GatePolicy":
        names = [c.name for c in (*self.checks, *self.safety)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"check names must be unique: {', '.join(repeated)}")
        if not names:
            raise ValueError("a policy needs at least one check")
        return self

    def digest(self) -> str:
        return json_digest(self.model_dump(mode="json"))


def load_policy(name_or_path: str | Path) -> GatePolicy:
    """A built-in policy by name (`default`, `demo`, `tiny`) or a YAML file."""
    path = Path(name_or_path)
    if not path.suffix and (BUILTIN / f"{name_or_path}.yaml").is_file():
        path = BUILTIN / f"{name_or_path}.yaml"
    if not path.is_file():
        builtins = ", ".join(sorted(p.stem for p in BUILTIN.glob("*.yaml")))
        raise PolicyError(f"no gate policy {name_or_path!r}: give a YAML file or one of {builtins}")
    try:
        return GatePolicy.model_validate(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as e:
        raise PolicyError(f"{path}: not valid YAML: {e}") from e
    except ValidationError as e:
        fields = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'policy'}: {err['msg']}"
                           for err in e.errors())
        raise PolicyError(f"{path}: {fields}") from e
