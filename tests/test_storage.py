"""A full disk (or any failing write) while a file is being committed: one `StorageError` that
names the file and the cause, and nothing left behind — no temp file, no partial final file.
ENOSPC is simulated in-process: the temp file's writes, flush, fsync or rename fail.
Also: what this process wrote is known by identity (`written_here`), not by bytes, and removing
files on S3 leaves no empty "folder" marker object."""

from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path
from typing import Any

import pytest

import distill.storage as storage
import distill.storage.atomic as atomic
from distill.errors import StorageError
from distill.shards import ShardWriter, make_metadata
from distill.storage import Location, atomic_write_bytes, remove_tree, written_here
from tests.test_shards import make_sample

ENOSPC = os.strerror(errno.ENOSPC)  # "No space left on device"


class _FullDisk:
    """A file that accepts `budget` bytes, then fails like a full disk (at write or flush)."""

    def __init__(self, fh: Any, budget: int, at: str) -> None:
        self._fh, self._budget, self._at = fh, budget, at

    def write(self, data: Any) -> int:
        n = len(memoryview(data).cast("B"))
        if self._at == "write" and n > self._budget:
            raise OSError(errno.ENOSPC, ENOSPC)
        self._budget -= n
        return int(self._fh.write(data))

    def flush(self) -> None:
        if self._at == "flush":
            raise OSError(errno.ENOSPC, ENOSPC)
        self._fh.flush()

    def fileno(self) -> int:
        return int(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    @property
    def name(self) -> str:
        return str(self._fh.name)


def _fill_disk(monkeypatch: pytest.MonkeyPatch, budget: int, at: str = "write") -> None:
    def full_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 (closed by the writer)
        return _FullDisk(fh, budget, at) if "w" in mode else fh

    monkeypatch.setattr(atomic, "open", full_open, raising=False)


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _write_shard(path: Path, rows: int = 3) -> None:
    with ShardWriter(path, make_metadata("f00d", {}), row_group_size=2) as writer:
        for k in range(rows):
            writer.write(make_sample(k + 1))


def _shard_bytes(tmp_path: Path) -> int:
    ref = tmp_path / "ref" / "s.parquet"
    _write_shard(ref)
    return ref.stat().st_size


@pytest.mark.parametrize("where", ["rows", "footer", "flush", "fsync", "rename"])
def test_a_full_disk_while_committing_a_shard_names_it_and_leaves_nothing(tmp_path, monkeypatch,
                                                                          where):
    size = _shard_bytes(tmp_path)
    folder = tmp_path / "shards"
    folder.mkdir()
    path = folder / "val2017-00000-of-00001.parquet"
    if where == "rows":  # the first row group does not fit
        _fill_disk(monkeypatch, budget=64)
    elif where == "footer":  # everything but the last bytes (the footer, in close()) fits
        _fill_disk(monkeypatch, budget=size - 16)
    elif where == "flush":  # the buffered tail cannot be flushed
        _fill_disk(monkeypatch, budget=1 << 30, at="flush")
    elif where == "fsync":
        def no_space(fd: int) -> None:
            raise OSError(errno.ENOSPC, ENOSPC)

        monkeypatch.setattr(atomic.os, "fsync", no_space)
    else:
        def cannot_rename(src: str, dst: str) -> None:
            raise OSError(errno.ENOSPC, ENOSPC)

        monkeypatch.setattr(atomic.os, "replace", cannot_rename)
    with pytest.raises(StorageError) as caught:
        _write_shard(path)
    assert str(caught.value) == f"cannot write {path}: {ENOSPC}"
    assert _left(folder) == []  # no temp, no partial shard


def test_an_abandoned_shard_writer_leaves_no_temp_when_the_disk_is_full(tmp_path, monkeypatch):
    """An error inside the `with` block (here: the disk fills while rows are flushed) drops the
    temp even though pyarrow's own close then fails too."""
    _fill_disk(monkeypatch, budget=64)
    path = tmp_path / "s.parquet"
    with pytest.raises(StorageError, match=ENOSPC), \
            ShardWriter(path, make_metadata("f00d", {}), row_group_size=1) as writer:
        writer.write(make_sample(1))
    assert _left(tmp_path) == []


def test_a_small_file_on_a_full_disk_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "manifest.json"
    path.write_bytes(b"old")
    _fill_disk(monkeypatch, budget=0, at="flush")
    with pytest.raises(StorageError, match=f"cannot write {path}: {ENOSPC}"):
        atomic_write_bytes(path, b"new contents")
    assert path.read_bytes() == b"old"
    assert _left(tmp_path) == ["manifest.json"]


def test_a_folder_that_cannot_be_written_names_the_file_not_the_temp(tmp_path, monkeypatch):
    def read_only(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", read_only, raising=False)
    with pytest.raises(StorageError) as caught:
        atomic_write_bytes(tmp_path / "config.toml", b"x")
    assert str(caught.value) == f"cannot write {tmp_path / 'config.toml'}: Read-only file system"


def test_written_here_is_what_this_process_wrote_not_equal_bytes(tmp_path, s3_bucket):
    import boto3

    local = tmp_path / "config.toml"
    atomic_write_bytes(local, b"same")
    assert written_here(local)
    replaced = tmp_path / "other"
    replaced.write_bytes(b"same")
    os.replace(replaced, local)  # another writer, the same bytes
    assert not written_here(local)
    assert not written_here(tmp_path / "never-written")

    remote = f"{s3_bucket}/run/config.toml"
    atomic_write_bytes(remote, b"same")
    assert written_here(remote)
    boto3.client("s3").put_object(Bucket=s3_bucket.removeprefix("s3://"),
                                  Key="run/config.toml", Body=b"same")
    assert not written_here(remote)
    Location(remote).delete()
    assert not written_here(remote)


def test_removing_files_on_s3_leaves_no_folder_marker(s3_bucket):
    """pyarrow's `delete_file` and `delete_dir` put an empty `PREFIX/` object in place of a
    prefix they leave empty (a stray 0-byte `RUN/` "folder" in a finished run)."""
    import boto3

    for name in ("manifest.json", "shards/a.parquet", "checkpoints/.last.next/model.bin",
                 "checkpoints/.last.next/state.pt"):
        atomic_write_bytes(f"{s3_bucket}/run/{name}", b"x")
    Location(f"{s3_bucket}/run/shards/a.parquet").delete()
    remove_tree(Location(f"{s3_bucket}/run/checkpoints/.last.next"))
    Location(f"{s3_bucket}/run/manifest.json").delete()
    listed = boto3.client("s3").list_objects_v2(Bucket=s3_bucket.removeprefix("s3://"))
    assert listed.get("Contents", []) == []


@pytest.mark.parametrize("uri", ["s3://Ident:Hush@bucket/run", "s3://Ident@bucket/run",
                                 "gs://Ident:Hush@bucket", "hdfs://Ident:Hush@namenode/run"])
def test_a_uri_holding_credentials_is_refused_without_showing_them(uri):
    with pytest.raises(StorageError, match="holds credentials") as err:
        storage.Location(uri)
    assert "***@" in str(err.value) and "Ident" not in str(err.value)
    assert "Hush" not in str(err.value)


def test_user_names_that_are_no_secret_stay():
    """An HDFS user and an Azure container sit where credentials would; they are kept."""
    assert storage.Location("hdfs://alice@namenode:8020/run").path == "alice@namenode:8020/run"
    assert storage.Location("abfs://box@acct.dfs.core.windows.net/run").path.startswith("box@")
    text = "s3://bucket/icon@2x.png, hdfs://alice@namenode/run, abfs://box@acct/run"
    assert storage.redact_credentials(text) == text
    assert storage.redact_credentials("at 's3://Ident@bucket/x' and gs://Ident:Hush@b") == \
        "at 's3://***@bucket/x' and gs://***@b"
