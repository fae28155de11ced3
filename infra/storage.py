"""One storage interface for local folders and S3: URIs in, bytes and listings out.

`file://` paths and plain paths are local; `s3://bucket/key` goes to S3 (AWS or any
S3-compatible server: AWS_ENDPOINT_URL selects it, credentials come from the usual AWS
variables). The same pyarrow filesystem objects serve Ray Data's readers and writers.
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

GLOB_CHARS = "*?["


class StorageError(OSError):
    """A URI cannot be read, listed or written; the message names it."""


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


STORAGE_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID",
               "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_PROFILE")


def storage_env() -> dict[str, str]:
    """The driver's S3 settings, for Ray workers started before they were set (runtime_env)."""
    return {k: os.environ[k] for k in STORAGE_ENV if k in os.environ}


def s3_region() -> str:
    return os.environ.get("AWS_DEFAULT_REGION", "us-east-1")


def s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs = {"region": s3_region(),
              "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
              "connect_timeout": 5, "request_timeout": 30}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs.update(endpoint_override=parsed.netloc or parsed.path, scheme=parsed.scheme or "http")
    if "AWS_ACCESS_KEY_ID" in os.environ:
        # explicit, so the filesystem object carries them to Ray workers started without them
        kwargs.update(access_key=os.environ["AWS_ACCESS_KEY_ID"],
                      secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
                      session_token=os.environ.get("AWS_SESSION_TOKEN"))
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path within it) for a local path, file:// URI or s3:// URI."""
    uri = str(uri)
    if is_s3(uri):
        return s3_filesystem(), uri.removeprefix("s3://").rstrip("/")
    if uri.startswith("file://"):
        uri = uri.removeprefix("file://")
    return pafs.LocalFileSystem(), str(Path(uri).resolve())


def absolute(uri: str | Path) -> str:
    """s3:// URIs as they are; local paths (and file://) made absolute."""
    fs, path = resolve(uri)
    return to_uri(fs, path)


def join(base: str, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def to_uri(fs: pafs.FileSystem, path: str) -> str:
    return f"s3://{path}" if isinstance(fs, pafs.S3FileSystem) else path


def list_files(location: str) -> list[str]:
    """Every file under a folder, a single file, or the files a glob matches; sorted URIs."""
    location = str(location)
    pattern = None
    if any(c in location for c in GLOB_CHARS):
        cut = min(location.find(c) for c in GLOB_CHARS if c in location)
        base = location[:cut].rsplit("/", 1)[0]
        pattern = location
    else:
        base = location
    fs, path = resolve(base)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            files = [path]
        elif info.type == pafs.FileType.Directory:
            files = [i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                     if i.type == pafs.FileType.File]
        else:
            raise StorageError(f"{location}: no such file or folder")
    except OSError as e:
        if isinstance(e, StorageError):
            raise
        raise StorageError(f"{location}: cannot list ({e})") from e
    uris = sorted(to_uri(fs, f) for f in files)
    if pattern is not None:
        full = pattern if is_s3(pattern) else str(Path(base).resolve()) + pattern[len(base):]
        uris = [u for u in uris if fnmatch.fnmatchcase(u, full)]
    return uris


def size_of(uri: str) -> int:
    fs, path = resolve(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as e:
        raise StorageError(f"{uri}: unreachable ({e})") from e
    if info.type != pafs.FileType.File:
        raise StorageError(f"{uri}: not a file")
    return info.size


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """The whole object; StorageError if it is unreachable or larger than max_bytes."""
    if max_bytes is not None:
        size = size_of(uri)
        if size > max_bytes:
            raise StorageError(f"{uri}: {size:,} bytes exceeds the limit of {max_bytes:,}")
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except OSError as e:
        raise StorageError(f"{uri}: unreadable ({e})") from e


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = resolve(uri)
    try:
        if not isinstance(fs, pafs.S3FileSystem):
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(data)
    except OSError as e:
        raise StorageError(f"{uri}: cannot write ({e})") from e


def create_new(uri: str, data: bytes) -> None:
    """Create `uri` with `data` only if nothing is there: FileExistsError if something is, so of
    two writers racing for one name exactly one wins. Locally a hidden temporary file (mode 0600)
    hard-linked into place: atomic, no reader sees half a file. On S3 a conditional put
    (If-None-Match: *): S3 refuses it (412) when the key exists, and may refuse one of two
    concurrent conditional puts (409); either way the caller lost the name."""
    if is_s3(uri):
        _put_if_absent(uri, data)
        return
    _, path = resolve(uri)
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, staged = tempfile.mkstemp(prefix=f".{Path(path).name}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.link(staged, path)  # atomic and exclusive: FileExistsError if the name is taken
    finally:
        os.unlink(staged)


def _put_if_absent(uri: str, data: bytes) -> None:
    # boto3, not pyarrow: pyarrow's S3 filesystem cannot send If-None-Match. boto3 finds the
    # endpoint and credentials in the same AWS_* variables as s3_filesystem.
    import boto3
    from botocore.exceptions import ClientError

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    client = boto3.client("s3", region_name=s3_region())
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except ClientError as e:
        if e.response["Error"]["Code"] in ("PreconditionFailed", "ConditionalRequestConflict"):
            raise FileExistsError(uri) from None
        raise StorageError(f"{uri}: cannot write ({e})") from e


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def delete_dir(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)
