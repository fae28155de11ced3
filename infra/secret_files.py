"""Secrets the embedded default makes for itself (an API key, a server's password): each in a
file of its own under LONGMIX_HOME, created once, readable by its owner only, never printed."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def secret_file(path: Path, make: Callable[[], str]) -> str:
    """The secret in `path`, written by `make()` the first time (mode 0600, in a 0700 folder)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    secret = make()
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret
