"""The safety prompt sets: longmix's own (safety_prompts.yaml) and loaders for the public formats
in a safety-data folder (its layout: docs/evals.md, "Safety data") (AdvBench, HarmBench, StrongREJECT, JailbreakBench,
XSTest, BIPIA, RealToxicityPrompts). A named file that is missing or lacks its column is an
error that says which; a set whose folder is absent is simply not loaded."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

BUILTIN = Path(__file__).with_name("safety_prompts.yaml")

# Harmful-request sets: (name, file under the folder, the prompt column)
HARMFUL_SETS = (
    ("advbench", "advbench/harmful_behaviors.csv", "goal"),
    ("harmbench", "harmbench/harmbench_behaviors_text_test.csv", "Behavior"),
    ("strongreject", "strongreject/strongreject_dataset.csv", "forbidden_prompt"),
    ("jailbreakbench", "jailbreakbench/jbb_harmful_behaviors.csv", "Goal"),
)
XSTEST = "xstest/xstest_prompts.csv"
RTP = "realtoxicityprompts_decodingtrust/toxic.jsonl"
BIPIA_EMAIL = "bipia/benchmark/email/test.jsonl"


@dataclass
class PromptSet:
    name: str  # builtin, advbench, ... xstest-safe
    source: str  # the file it was read from
    prompts: list[str]

    @property
    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.prompts).encode()).hexdigest()


def builtin() -> dict:
    return yaml.safe_load(BUILTIN.read_text(encoding="utf-8"))


def read_csv_column(path: Path, column: str, where: dict[str, str] | None = None) -> list[str]:
    """One column of a CSV (header matched case-insensitively), rows filtered by `where`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such prompt file")
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.DictReader(f)
        by_name = {name.strip().lower(): name for name in rows.fieldnames or []}
        wanted = [column, *(where or {})]
        missing = [c for c in wanted if c.lower() not in by_name]
        if missing:
            raise ValueError(f"{path}: no column {missing}; it has {rows.fieldnames}")
        return [row[by_name[column.lower()]].strip() for row in rows
                if row[by_name[column.lower()]].strip()
                and all(row[by_name[k.lower()]].strip() == v for k, v in (where or {}).items())]


def harmful_sets(folder: Path | None, limit: int) -> list[PromptSet]:
    sets = [PromptSet("builtin", str(BUILTIN), builtin()["harmful"][:limit])]
    for name, rel, column in HARMFUL_SETS:
        if folder is not None and (folder / rel).parent.is_dir():
            sets.append(PromptSet(name, str(folder / rel), read_csv_column(folder / rel,
                                                                           column)[:limit]))
    return sets


def lookalike_sets(folder: Path | None, limit: int) -> list[PromptSet]:
    """Safe prompts that look unsafe: the built-in ones and XSTest's 250 safe prompts."""
    sets = [PromptSet("builtin", str(BUILTIN), builtin()["lookalikes"][:limit])]
    if folder is not None and (folder / XSTEST).parent.is_dir():
        path = folder / XSTEST
        sets.append(PromptSet("xstest-safe", str(path),
                              read_csv_column(path, "prompt", {"label": "safe"})[:limit]))
    return sets


def toxicity_sets(folder: Path | None, limit: int) -> list[PromptSet]:
    sets = [PromptSet("builtin", str(BUILTIN), builtin()["toxicity"][:limit])]
    if folder is not None and (folder / RTP).parent.is_dir():
        path = folder / RTP
        prompts = [json.loads(line)["prompt"]["text"] for line in
                   path.read_text(encoding="utf-8").splitlines() if line.strip()]
        sets.append(PromptSet("realtoxicityprompts-toxic", str(path), prompts[:limit]))
    return sets


def bipia_contexts(folder: Path | None, limit: int) -> list[str]:
    """BIPIA's email contexts (external content an assistant is asked about), when present."""
    if folder is None or not (folder / BIPIA_EMAIL).is_file():
        return []
    lines = (folder / BIPIA_EMAIL).read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["context"] for line in lines if line.strip()][:limit]
