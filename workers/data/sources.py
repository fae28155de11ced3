"""Real text that every Python installation carries, for tokenizer training, smoke runs and
tests: CPython's pydoc topic pages (English prose) and the standard library's sources (code)."""

from __future__ import annotations

import sysconfig
from pathlib import Path


def python_docs_corpus() -> list[str]:
    """The pydoc help topics: about 200 documents of English technical prose."""
    from pydoc_data.topics import topics
    return [topics[k] for k in sorted(topics)]


def stdlib_sources(max_bytes: int = 8_000_000) -> list[str]:
    """Standard-library modules (tests and vendored packages excluded), smallest path first."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, used = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(p in ("test", "tests", "idlelib", "site-packages", "lib2to3") for p in rel):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if used + len(text) > max_bytes:
            break
        docs.append(text)
        used += len(text)
    return docs
