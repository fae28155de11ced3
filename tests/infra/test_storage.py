import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infra.storage import StorageError, absolute, list_files, read_bytes, write_bytes
from workers.data.manifest import describe_split


def test_local_listing_globs_limits_and_absolute_paths(tmp_path, monkeypatch):
    write_bytes(str(tmp_path / "a" / "x.txt"), b"hello")
    write_bytes(str(tmp_path / "a" / "y.png"), b"png")
    assert list_files(str(tmp_path)) == [str(tmp_path / "a" / "x.txt"), str(tmp_path / "a" / "y.png")]
    assert list_files(str(tmp_path / "a" / "*.png")) == [str(tmp_path / "a" / "y.png")]
    assert read_bytes(str(tmp_path / "a" / "x.txt")) == b"hello"
    with pytest.raises(StorageError, match="5 bytes exceeds the limit of 4"):
        read_bytes(str(tmp_path / "a" / "x.txt"), max_bytes=4)
    with pytest.raises(StorageError, match="no such file or folder"):
        list_files(str(tmp_path / "missing"))
    monkeypatch.chdir(tmp_path)
    assert absolute("a/x.txt") == str(tmp_path / "a" / "x.txt")
    assert absolute("s3://bucket/key") == "s3://bucket/key"


def test_shard_paths_are_relative_to_a_relative_dataset_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds" / "train").mkdir(parents=True)
    pq.write_table(pa.table({"tokens": [[20, 21, 22]]}), tmp_path / "ds" / "train" / "s.parquet")
    split = describe_split("ds", "train")
    assert [s["path"] for s in split["shards"]] == ["train/s.parquet"]
    assert split["rows"] == 1 and split["tokens"]["text"] == 3
