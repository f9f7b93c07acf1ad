"""What bounds `distill view`'s memory, and a run that vanishes while it is served: the LRU on
its own, then the app on a small synthetic shards folder (no Ray) through Starlette's test
client — unknown names leave nothing behind, caches stay within entries and bytes, a failed
build is retried, a deleted folder is one log line and a 410, never a traceback."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from distill.errors import ShardError
from distill.view import app as app_module
from distill.view import create_app
from distill.view.memory import LRU
from tests.test_shards import make_sample
from tests.test_viz import write_shard

ROWS = 3  # per shard; two shards, row groups of 2


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    folder = tmp_path / "shards"
    folder.mkdir()
    for k in range(2):
        write_shard(folder / f"val2017-{k:05d}.parquet",
                    [make_sample(100 * k + i, h=48, w=64) for i in range(ROWS)])
    return folder


def _keys(folder: Path) -> list[tuple[str, int]]:
    return [(p.name, i) for p in sorted(folder.glob("*.parquet")) for i in range(ROWS)]


# -- the LRU --------------------------------------------------------------------------------


def test_the_lru_keeps_at_most_its_entries_and_its_bytes():
    lru: LRU[int, bytes] = LRU(entries=4, max_bytes=100)
    for k in range(50):
        assert lru.get_or_make(k, lambda k=k: bytes(10 + k % 30)) == bytes(10 + k % 30)
        assert len(lru) <= 4 and lru.nbytes <= 100
    assert lru.nbytes == sum(10 + k % 30 for k in range(50) if k in lru)
    assert 49 in lru and 0 not in lru  # the least recently used went first
    big = lru.get_or_make("big", lambda: bytes(101))
    assert len(big) == 101 and "big" not in lru  # returned, not kept
    calls = []
    lru.get_or_make(49, lambda: calls.append(1) or b"")
    assert not calls  # a hit does not build


def test_failing_builds_are_not_cached_and_leave_nothing_behind():
    lru: LRU[str, bytes] = LRU(entries=8, max_bytes=1 << 20)

    def fail() -> bytes:
        raise ShardError("no such shard")

    for k in range(10_000):  # unique unknown names, as from URLs
        with pytest.raises(ShardError):
            lru.get_or_make(f"nope-{k}", fail)
    assert len(lru) == 0 and lru.nbytes == 0 and lru.building == 0
    with pytest.raises(ShardError):
        lru.get_or_make("later", fail)
    assert lru.get_or_make("later", lambda: b"now") == b"now"  # tried again, then kept
    assert "later" in lru and lru.building == 0


def test_a_thread_waiting_on_a_failed_build_builds_it_itself():
    lru: LRU[str, bytes] = LRU(entries=8, max_bytes=1 << 20)
    started, release = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def first() -> bytes:
        started.set()
        release.wait(60)
        raise ShardError("first build fails")

    def ask(name: str, make) -> None:
        try:
            results[name] = lru.get_or_make("k", make)
        except ShardError as exc:
            results[name] = exc

    a = threading.Thread(target=ask, args=("a", first))
    a.start()
    assert started.wait(60)
    b = threading.Thread(target=ask, args=("b", lambda: b"second"))
    b.start()
    deadline = time.monotonic() + 60
    while lru._building["k"].waiting < 2:  # until b is queued behind a's build
        assert b.is_alive() and time.monotonic() < deadline
        time.sleep(0.001)
    release.set()
    a.join(60)
    b.join(60)
    assert isinstance(results["a"], ShardError) and results["b"] == b"second"
    assert lru.building == 0 and "k" in lru


# -- the app ---------------------------------------------------------------------------------


def test_unknown_shard_names_leave_the_apps_caches_empty(shards):
    with TestClient(create_app(shards)) as client:
        for k in range(300):
            name = f"nope-{k}.parquet"
            for url in (f"/thumb/{name}/0.jpg", f"/image/{name}/0.jpg",
                        f"/api/sample/{name}/0", f"/layer/teacher/{name}/0/depth.png"):
                res = client.get(url)
                assert res.status_code == 404 and "no shard" in res.json()["error"]
        shard = _keys(shards)[0][0]
        assert client.get(f"/layer/teacher/{shard}/0/nonsense.png").status_code == 404
        caches = client.app.state.caches
        assert all(c.building == 0 for c in caches.values())
        assert len(caches["thumbs"]) == len(caches["pictures"]) == 0
        assert len(caches["decoded"]) == 1  # the one real row the bad layer name decoded


def test_the_apps_caches_stay_within_entries_and_bytes(shards, monkeypatch):
    monkeypatch.setattr(app_module, "THUMBS", (2, 1 << 30))
    monkeypatch.setattr(app_module, "PICTURES", (1000, 40_000))
    monkeypatch.setattr(app_module, "DECODED", (2, 1 << 30))
    with TestClient(create_app(shards)) as client:
        caches = client.app.state.caches
        for shard, row in _keys(shards) * 2:
            assert client.get(f"/thumb/{shard}/{row}.jpg").status_code == 200
            assert client.get(f"/image/{shard}/{row}.jpg").status_code == 200
            for name in ("depth", "normals", "groups", "text", "people", "panoptic"):
                res = client.get(f"/layer/teacher/{shard}/{row}/{name}.png")
                assert res.status_code == 200, name
            assert len(caches["thumbs"]) <= 2 and len(caches["decoded"]) <= 2
            assert 0 < caches["pictures"].nbytes <= 40_000
            assert caches["row_groups"].nbytes <= 64 << 20
        assert all(c.building == 0 for c in caches.values())


def test_a_failed_picture_is_made_again_on_the_next_request(shards, monkeypatch):
    real, calls = app_module.image_jpeg, []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 1:
            raise ShardError("a transient read error")
        return real(*args)

    monkeypatch.setattr(app_module, "image_jpeg", flaky)
    shard, row = _keys(shards)[0]
    with TestClient(create_app(shards)) as client:
        assert client.get(f"/image/{shard}/{row}.jpg").status_code == 500
        res = client.get(f"/image/{shard}/{row}.jpg")
        assert res.status_code == 200 and res.content[:2] == b"\xff\xd8"
        assert client.get(f"/image/{shard}/{row}.jpg").status_code == 200
    assert len(calls) == 2  # the failure was not kept; the success was


def test_an_unreadable_shard_is_skipped_by_the_indexer_with_one_line(shards, caplog):
    with TestClient(create_app(shards)) as client, caplog.at_level(logging.INFO):
        view = client.app.state.view
        bad = sorted(shards.glob("*.parquet"))[1]
        bad.write_bytes(b"not parquet any more")  # our own file, after its footer was read
        while view.index_step():
            pass
        body = client.get("/api/rows", params={"sort": "people"}).json()
        assert body["complete"] and body["total"] == ROWS
        assert body["index"] == {"shards": 2, "indexed": 1, "skipped": 1, "rows": 2 * ROWS,
                                 "indexed_rows": ROWS}
        assert view.index_step() is False
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and said[0].startswith(f"no statistics for shard {bad.name}")
    assert not any(r.exc_info for r in caplog.records)


def _gone_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "is gone" in r.getMessage()]


def _assert_all_gone(client, folder: Path, keys: list[tuple[str, int]]) -> None:
    shard, row = keys[-1]
    for url in (f"/thumb/{shard}/{row}.jpg", "/api/rows", "/api/rows?sort=people", "/api/run",
                f"/api/sample/{shard}/{row}", f"/image/{shard}/{row}.jpg",
                f"/layer/teacher/{shard}/{row}/depth.png"):
        res = client.get(url)
        assert res.status_code == 410, url
        assert res.json()["error"].startswith(f"{folder} is gone"), url
    assert client.get("/").status_code == 200  # the front end, to say so


def test_a_deleted_folder_stops_the_indexer_after_one_log_line(shards, caplog, monkeypatch):
    raised: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append(args.exc_value))
    keys = _keys(shards)
    with TestClient(create_app(shards)) as client, caplog.at_level(logging.INFO):
        view = client.app.state.view
        assert client.get("/api/rows").json()["total"] == 2 * ROWS
        shutil.rmtree(shards)
        view.start_index()  # the background indexer meets the missing shards
        for thread in threading.enumerate():
            if thread.name == "distill-view-index":
                thread.join(60)
        assert view.index_step() is False  # nothing left for it to do
        view.start_index()  # and asking again starts nothing
        assert not any(t.name == "distill-view-index" for t in threading.enumerate())
        _assert_all_gone(client, shards, keys)
    assert raised == []
    assert len(_gone_records(caplog)) == 1
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == _gone_records(caplog)
    assert not any(r.exc_info for r in caplog.records)


def test_a_request_that_meets_a_deleted_folder_gets_a_410_until_it_is_back(shards, caplog,
                                                                           tmp_path):
    keys = _keys(shards)
    copy = shutil.copytree(shards, tmp_path / "copy")
    with TestClient(create_app(shards)) as client, caplog.at_level(logging.INFO):
        assert client.get("/api/rows").status_code == 200
        shutil.rmtree(shards)
        _assert_all_gone(client, shards, keys)  # first seen by a thumbnail's read, in 5 s
        _assert_all_gone(client, shards, keys)
        assert len(_gone_records(caplog)) == 1 and not any(r.exc_info for r in caplog.records)
        shutil.copytree(copy, shards)  # moved back: served again
        assert client.get("/api/rows").json()["total"] == 2 * ROWS
        shard, row = keys[-1]
        assert client.get(f"/thumb/{shard}/{row}.jpg").status_code == 200
