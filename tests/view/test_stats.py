"""`distill view`'s statistics file: a second start reads it and computes only the shards that
are new or changed since; a file at its name that distill did not write is never overwritten.
A small synthetic run (shards + a manifest, no Ray)."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distill.manifest import Manifest, ShardEntry, read_manifest, write_manifest
from distill.runfolder import VIEW_STATS, LabelRun, resolve_shards
from distill.storage import Location, file_sha256
from distill.view import index as index_module
from distill.view.index import Query, RunView
from distill.view.stats import cache_folder, stats_file
from tests.test_shards import make_sample
from tests.test_viz import write_shard

ROWS = 3  # per shard


def _write(run: Path, k: int, first_id: int) -> ShardEntry:
    name = f"val2017-{k:05d}.parquet"
    path = write_shard(run / "shards" / name,
                       [make_sample(first_id + i, h=24, w=32) for i in range(ROWS)])
    return ShardEntry(name, [first_id + i for i in range(ROWS)], {"depth": "done"}, ROWS,
                      file_sha256(path), path.stat().st_size)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    (out / "shards").mkdir(parents=True)
    write_manifest(out / "manifest.json", Manifest(
        "val2017", "f" * 16, {}, ROWS, [_write(out, k, 100 * k) for k in range(3)]))
    return out


@pytest.fixture
def computed(monkeypatch) -> list[str]:
    """The shards whose statistics are computed (not read from the file), by name."""
    calls: list[str] = []
    real = index_module.shard_statistics

    def counting(location: Location) -> pa.Table:
        calls.append(location.name)
        return real(location)

    monkeypatch.setattr(index_module, "shard_statistics", counting)
    return calls


def _indexed(path: Path) -> RunView:
    view = RunView(path)
    while view.index_step():
        pass
    return view


def _ranked(view: RunView) -> list[tuple[str, int | None]]:
    body = view.query(Query(sort="people"), 0, 100)
    assert body["complete"]
    return [(c["key"], c["sort_value"]) for c in body["rows"]]


def test_a_warm_start_reads_the_file_and_computes_nothing(run, computed):
    first = _indexed(run)
    assert sorted(computed) == [p.name for p in resolve_shards(run)]
    assert first.stats_file.location == Location(run / VIEW_STATS)
    assert VIEW_STATS in LabelRun(run).fixed  # a run file distill owns (--new-run removes it)
    computed.clear()
    second = _indexed(run)
    assert computed == []
    assert _ranked(second) == _ranked(first)
    assert second.index_status()["indexed_rows"] == 3 * ROWS


def test_a_changed_shard_and_a_new_one_are_computed_and_only_they(run, computed):
    before = _ranked(_indexed(run))
    manifest = read_manifest(run / "manifest.json")
    manifest.shards[1] = _write(run, 1, 500)  # committed again with other rows
    manifest.shards.append(_write(run, 3, 700))  # the run grew
    write_manifest(run / "manifest.json", manifest)
    computed.clear()
    view = _indexed(run)
    assert sorted(computed) == ["val2017-00001.parquet", "val2017-00003.parquet"]
    after = view.query(Query(sort="image_id", descending=False), 0, 100)["rows"]
    assert [c["image_id"] for c in after] == [0, 1, 2, 200, 201, 202, 500, 501, 502,
                                              700, 701, 702]
    assert len(_ranked(view)) == len(before) + ROWS
    computed.clear()
    _indexed(run)  # and the file now holds them
    assert computed == []


@pytest.mark.parametrize("foreign", [b"my own notes, not parquet", "parquet"])
def test_a_file_distill_did_not_write_is_left_alone(run, computed, foreign, caplog):
    target = run / VIEW_STATS
    if foreign == "parquet":  # a user's table under that name: no distill mark
        pq.write_table(pa.table({"x": [1, 2, 3]}), target)
    else:
        target.write_bytes(foreign)
    before = target.read_bytes()
    with caplog.at_level(logging.WARNING):
        view = _indexed(run)
    assert target.read_bytes() == before
    assert sorted(computed) == [p.name for p in resolve_shards(run)]
    cached = view.stats_file.location
    assert cached.is_local and Path(cached.path).parent == cache_folder() and cached.is_file()
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said and all(f"{target} is not a statistics file distill wrote" in m for m in said)
    computed.clear()
    assert _ranked(_indexed(run)) == _ranked(view)  # the cache serves the next start
    assert computed == [] and target.read_bytes() == before


def test_a_stale_file_of_distills_is_rebuilt(run, computed):
    _indexed(run)
    target = run / VIEW_STATS
    table = pq.read_table(target)
    pq.write_table(table.drop_columns(["people"]), target)  # an older layout, still marked ours
    computed.clear()
    view = _indexed(run)
    assert len(computed) == 3 and view.stats_file.location == Location(target)
    assert "people" in pq.read_schema(target).names


def test_where_the_file_lives(run, tmp_path):
    assert stats_file(Location(run), LabelRun(run)).location == Location(run / VIEW_STATS)
    assert stats_file(Location(run / "shards"), LabelRun(run)).location == \
        Location(run / VIEW_STATS)
    plain = stats_file(Location(tmp_path / "folder"), None).location
    remote = stats_file(Location("s3://bucket/runs/a"), LabelRun("s3://bucket/runs/a"))
    for loc in (plain, remote.location):  # the cache: never written into a bucket or a
        assert Path(loc.path).parent == cache_folder()  # folder distill did not make
    assert plain != remote.location
