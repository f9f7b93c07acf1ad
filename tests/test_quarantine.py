"""The quarantine file: plain Parquet, rows of a reprocessed shard replaced (never duplicated),
everything else kept, and a summary by stage and error type."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from distill.errors import ShardError
from distill.quarantine import Failure, read_quarantine, replace_failures, summarise

COLUMNS = ["image_id", "file_name", "shard", "stage", "error_type", "message"]


def _f(image_id: int, shard: str, stage: str = "decode", error_type: str = "ImageDecodeError",
       message: str = "corrupt") -> Failure:
    return Failure(image_id, f"{image_id:012d}.jpg", shard, stage, error_type, message)


def _keys(failures: list[Failure]) -> list[tuple[int, str, str]]:
    return sorted((f.image_id, f.shard, f.message) for f in failures)


def test_failures_are_written_as_plain_parquet(tmp_path):
    path = tmp_path / "quarantine.parquet"
    written = replace_failures(path, ["a"], [2, 1], [_f(2, "a", message="second"),
                                                    _f(1, "a", "teacher:depth", "ValueError")])
    table = pq.read_table(path)
    assert table.column_names == COLUMNS
    assert table.num_rows == 2
    rows = table.to_pylist()
    assert rows[0] == {"image_id": 1, "file_name": "000000000001.jpg", "shard": "a",
                       "stage": "teacher:depth", "error_type": "ValueError",
                       "message": "corrupt"}
    assert rows[1]["image_id"] == 2 and rows[1]["message"] == "second"
    assert read_quarantine(path) == written == [_f(1, "a", "teacher:depth", "ValueError"),
                                                _f(2, "a", message="second")]
    assert os.listdir(tmp_path) == ["quarantine.parquet"]  # no temp file left behind


def test_a_shard_that_changes_nothing_leaves_the_file_alone(tmp_path):
    """Issue 31, item 3: a commit's cost must not grow with the run; a shard that quarantined
    nothing (and had nothing recorded) does not rewrite the file, however many rows it holds."""
    path = tmp_path / "quarantine.parquet"
    replace_failures(path, ["a"], [1, 2], [_f(1, "a"), _f(2, "a")])
    before = path.stat()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns - 10**9))  # an older file
    old = path.stat()
    assert replace_failures(path, ["b"], [3, 4], []) == [_f(1, "a"), _f(2, "a")]
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (old.st_ino, old.st_mtime_ns)
    # dropping a recorded failure (image 2 labelled this time) does rewrite it
    assert replace_failures(path, ["a"], [2], []) == [_f(1, "a")]
    assert read_quarantine(path) == [_f(1, "a")] and path.stat().st_ino != old.st_ino
    # the first commit of a run with no failures still writes the (empty) file users look for
    empty = tmp_path / "empty.parquet"
    assert replace_failures(empty, ["a"], [1], []) == [] and pq.read_table(empty).num_rows == 0


def test_reprocessing_a_shard_replaces_its_rows_and_keeps_the_rest(tmp_path):
    path = tmp_path / "quarantine.parquet"
    replace_failures(path, [""], [1], [_f(1, "", "read", "UnsafePathError", "annotation")])
    replace_failures(path, ["a"], [1, 2, 3], [_f(1, "a", message="old 1"),
                                             _f(2, "a", message="old 2"),
                                             _f(3, "a", message="old 3")])
    replace_failures(path, ["b"], [7], [_f(7, "b", message="in b")])
    assert len(read_quarantine(path)) == 5

    # Shard a again, for ids 1 and 2 only: 1 fails anew, 2 now succeeds, 3 was not redone.
    rows = replace_failures(path, ["a"], [1, 2], [_f(1, "a", message="new 1")])
    expected = [(1, "", "annotation"), (1, "a", "new 1"), (3, "a", "old 3"), (7, "b", "in b")]
    assert _keys(rows) == expected
    assert _keys(read_quarantine(path)) == expected
    assert [f.image_id for f in rows] == [1, 1, 3, 7]  # sorted by image id

    # The same call again does not duplicate anything.
    rows = replace_failures(path, ["a"], [1, 2], [_f(1, "a", message="new 1")])
    assert _keys(rows) == expected
    assert pq.read_table(path).num_rows == 4


def test_an_empty_list_writes_a_readable_empty_file(tmp_path):
    path = tmp_path / "quarantine.parquet"
    assert replace_failures(path, ["a"], [1], []) == []
    assert pq.read_table(path).column_names == COLUMNS
    assert read_quarantine(path) == []


def test_reading_a_missing_or_broken_file(tmp_path):
    assert read_quarantine(tmp_path / "nothing.parquet") == []
    broken = tmp_path / "quarantine.parquet"
    broken.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(ShardError, match=r"quarantine\.parquet"):
        read_quarantine(broken)


def test_summary_counts_by_stage_and_error_type_most_common_first():
    failures = [
        _f(1, "a"), _f(2, "a"),
        _f(3, "a", "teacher:depth", "OutOfMemoryError"),
        _f(4, "b", "decode", "SizeMismatch"),
        _f(5, "b"), _f(6, "b", "teacher:depth", "OutOfMemoryError"),
    ]
    summary = summarise(failures)
    assert summary == {"decode/ImageDecodeError": 3, "teacher:depth/OutOfMemoryError": 2,
                       "decode/SizeMismatch": 1}
    assert list(summary) == ["decode/ImageDecodeError", "teacher:depth/OutOfMemoryError",
                             "decode/SizeMismatch"]
    assert summarise([]) == {}
