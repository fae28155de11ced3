"""Each worker package (data, train, evals, serve) is changed on its own: it imports another
worker's package only through a documented contract (docs/contracts.md); models are found
through infra/registry.py, so evals and serving never import the training worker."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKERS = sorted(p.name for p in (ROOT / "workers").iterdir()
                 if p.is_dir() and (p / "__init__.py").exists())

# Modules of one worker that others may import, each defined by a contract in docs/contracts.md:
# contract 2 (the dataset manifest, the rows of its shards and their packing) and contract 8 (the
# evaluation inputs the evals build with the data worker's code).
CONTRACT_MODULES = {
    "workers.data.manifest", "workers.data.records", "workers.data.pack",  # contract 2
    "workers.data.needles", "workers.data.retrieval", "workers.data.sources",  # contract 8
    "workers.data.media", "workers.data.media_sources", "workers.data.synth",
}
CONTRACTS = ROOT / "docs" / "contracts.md"


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
    unexpected = {c for c in crossings() if c[1] not in CONTRACT_MODULES}
    assert unexpected == set(), "import these through a contract or move them to infra/ or model/"


def test_every_contract_module_is_named_in_the_contracts():
    # a module another worker may import is part of a contract a reader can find
    text = CONTRACTS.read_text()
    assert {m for m in CONTRACT_MODULES if f"`{m}`" not in text} == set()
