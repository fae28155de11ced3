"""Each worker package (data, train, evals, serve) is changed on its own: it imports another
worker's package only through a documented contract (docs/contracts.md); models are found
through infra/registry.py, so evals and serving never import the training worker."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKERS = sorted(p.name for p in (ROOT / "workers").iterdir()
                 if p.is_dir() and (p / "__init__.py").exists())

# Modules of one worker that others may import: contract 2 (the dataset manifest, the rows of its
# shards and their packing), which docs/contracts.md defines.
CONTRACT_MODULES = {"workers.data.manifest", "workers.data.records", "workers.data.pack"}
# Crossings that remain, each to be moved out of the worker it lives in: the eval needle and
# haystack helpers and media readers (shared by the curriculum and the evals), and the decode
# loop the evals' in-process adapter borrows from serving (one engine in model/, issue 16).
KNOWN_CROSSINGS = {
    ("evals", "workers.data.media"), ("evals", "workers.data.media_sources"),
    ("evals", "workers.data.needles"), ("evals", "workers.data.retrieval"),
    ("evals", "workers.data.sources"), ("evals", "workers.data.synth"),
    ("evals", "workers.serve.batch_decode"), ("evals", "workers.serve.sequence"),
}


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


def crossings() -> set[tuple[str, str]]:
    """(worker, module of another worker) for every import across worker packages."""
    found = set()
    for worker in WORKERS:
        for path in (ROOT / "workers" / worker).rglob("*.py"):
            for module in imported_modules(path):
                parts = module.split(".")
                if len(parts) >= 2 and parts[0] == "workers" and parts[1] != worker:
                    found.add((worker, module))
    return found


def test_workers_import_each_other_only_through_contracts():
    unexpected = {c for c in crossings() if c[1] not in CONTRACT_MODULES} - KNOWN_CROSSINGS
    assert unexpected == set(), "import these through a contract or move them to infra/ or model/"


def test_the_known_crossings_are_all_still_there():
    # a crossing removed must leave the list too, so that it cannot come back unnoticed
    assert KNOWN_CROSSINGS <= crossings()

