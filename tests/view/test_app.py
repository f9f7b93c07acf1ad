"""`distill view`'s HTTP API through Starlette's test client, on the session's real coco7 run
(tiny teachers, real CRAFT) with a briefly trained student: pages, filters and sorts against the
rows read back with pyarrow, pictures, the run page, path traversal, read-only, S3, the CLI."""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from distill.cli import app as cli_app
from distill.errors import ViewError
from distill.images import decode_png
from distill.labels.groups import decode_group_mask
from distill.runfolder import VIEW_STATS
from distill.shards import decode_row
from distill.view.index import CLASS_GROUP_NAMES, Query, RunView

pytestmark = pytest.mark.slow


def _rows(run: Path) -> list[dict]:
    """Every row of the run's shards, in run order, read with plain pyarrow."""
    out = []
    for path in sorted((run / "shards").glob("*.parquet")):
        for i, row in enumerate(pq.read_table(path).to_pylist()):
            out.append(row | {"_key": f"{path.name}/{i}"})
    return out


def _complete(client, params: dict) -> dict:
    """/api/rows with `params`, once the statistics cover every shard."""
    deadline = time.monotonic() + 120
    while True:
        body = client.get("/api/rows", params=params).json()
        if body["complete"] or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def test_grid_pages_in_run_order(view_client, labelled_coco7):
    rows = _rows(labelled_coco7[1])
    first = view_client.get("/api/rows", params={"limit": 4}).json()
    assert first["total"] == len(rows) == 7 and first["complete"]
    rest = view_client.get("/api/rows", params={"offset": 4, "limit": 4}).json()
    cards = first["rows"] + rest["rows"]
    assert [c["key"] for c in cards] == [r["_key"] for r in rows]
    for card, row in zip(cards, rows, strict=True):
        assert card["image_id"] == row["image_id"]
        assert card["people"] == len(row["persons"] or [])
        assert card["teachers"] == {"depth": True, "panoptic": True, "text": True,
                                    "caption": True, "pose": True, "parts": False}
        share = float((decode_png(row["text_png"]) > 0).mean())
        assert card["text_share"] == pytest.approx(share)
        assert card["tokens"] == (row["tokens"] or [])
        # the demo preset's teachers are random-initialised tiny configs but CRAFT
        assert "depth" in card["random_weights"] and "text" not in card["random_weights"]


def test_filters_and_sorts_match_the_rows(view_client, labelled_coco7):
    rows = _rows(labelled_coco7[1])
    by_people = _complete(view_client, {"sort": "people", "order": "desc", "limit": 50})
    counts = [c["people"] for c in by_people["rows"]]
    assert counts == sorted((len(r["persons"] or []) for r in rows), reverse=True)
    assert by_people["index"]["indexed"] == by_people["index"]["shards"]

    with_people = _complete(view_client, {"people_min": 1, "limit": 50})
    assert {c["image_id"] for c in with_people["rows"]} == {
        r["image_id"] for r in rows if r["persons"]}

    # a word from one row's tokens or captions finds exactly the rows that have it
    word = next(t for r in rows for t in (r["tokens"] or []))
    found = _complete(view_client, {"word": word, "limit": 50})
    expect = {r["image_id"] for r in rows if word in " ".join(
        (r["teacher_captions"] or []) + (r["coco_captions"] or []) + (r["tokens"] or [])).lower()}
    assert {c["image_id"] for c in found["rows"]} == expect and expect

    # class-group shares from the group masks, decoded here independently
    k, name = next((k, g) for k, g in enumerate(CLASS_GROUP_NAMES)
                   if any(decode_group_mask(decode_png(r["groups_png"]))[k].any() for r in rows))
    shares = {r["image_id"]: float(decode_group_mask(decode_png(r["groups_png"]))[k].mean())
              for r in rows}
    top = sorted(shares.values(), reverse=True)
    threshold = top[0] / 2
    got = _complete(view_client, {"group": name, "min_share": threshold, "limit": 50})
    assert {c["image_id"] for c in got["rows"]} == {i for i, s in shares.items()
                                                   if s >= threshold}
    ranked = _complete(view_client, {"sort": f"group:{name}", "order": "asc", "limit": 50})
    assert [c["sort_value"] for c in ranked["rows"]] == pytest.approx(sorted(shares.values()))

    assert _complete(view_client, {"missing": "caption"})["total"] == 0
    assert _complete(view_client, {"quarantined": "any"})["total"] == 0


def test_bad_queries_are_400_with_the_reason(view_client):
    for params, words in [({"sort": "nonsense"}, "sort"), ({"group": "Cats"}, "class group"),
                          ({"limit": 0}, "limit"), ({"offset": "x"}, "offset"),
                          ({"missing": "depthx"}, "teacher"), ({"min_share": "lots"}, "number")]:
        res = view_client.get("/api/rows", params=params)
        assert res.status_code == 400, params
        assert words in res.json()["error"]


def test_sample_page_layers_and_student(view_client, labelled_coco7):
    row = _rows(labelled_coco7[1])[0]
    shard, i = row["_key"].split("/")
    doc = view_client.get(f"/api/sample/{shard}/{i}").json()
    sample = decode_row({k: v for k, v in row.items() if k != "_key"})
    assert doc["image_id"] == sample.image_id and doc["tokens"] == sample.tokens
    assert len(doc["segments"]) == len(sample.segments)
    assert all(isinstance(s["category"], str) for s in doc["segments"])
    assert set(doc["provenance"]) == {"depth", "panoptic", "text", "caption", "pose"}
    assert {"depth", "normals", "groups", "text", "people", "panoptic"} <= set(doc["layers"])
    w, h = doc["display"]
    image = Image.open(io.BytesIO(view_client.get(f"/image/{shard}/{i}.jpg").content))
    assert image.size == (w, h)
    for source, names in (("teacher", doc["layers"]), ("student", doc["student"]["layers"])):
        for name in names:
            res = view_client.get(f"/layer/{source}/{shard}/{i}/{name}.png")
            assert res.status_code == 200, (source, name)
            layer = Image.open(io.BytesIO(res.content))
            assert layer.mode == "RGBA" and layer.size == (w, h), (source, name)
    depth = np.asarray(Image.open(io.BytesIO(
        view_client.get(f"/layer/teacher/{shard}/{i}/depth.png").content)))
    assert depth[..., 3].min() == 255 and depth[..., :3].std() > 0  # an opaque colour map
    # the student's per-sample scores are evaluate's on that one row
    scores = doc["student"]["scores"]
    assert set(scores["hdm@0.1"]) == {"joints", "pafs", "depth", "normals", "text",
                                      "segmentation"}
    assert all(v is None or 0.0 <= v <= 1.0 for v in scores["hdm@0.1"].values())
    assert res.headers["cache-control"].startswith("private")


def test_score_sample_equals_evaluate_on_that_row(labelled_coco7, view_student):
    from distill.student.evaluate import evaluate, score_sample
    from distill.student.predict import load_student

    _, run, _ = labelled_coco7
    student = load_student(str(view_student))
    first = sorted((run / "shards").glob("*.parquet"))[0]
    sample = decode_row(pq.read_table(first).slice(0, 1).to_pylist()[0])
    mine = score_sample(student.model, student.config, sample, vocab=student.vocab,
                        epoch=student.epoch)
    report = evaluate(student.model, student.config, [first], vocab=student.vocab,
                      epoch=student.epoch, batch_size=1, limit=1, pose=False)
    for name, row in report["table2"].items():
        assert mine["hdm@0.1"][name] == pytest.approx(row["hdm@0.1"]), name
    assert mine["token_cosine"] == pytest.approx(report["token_cosine"])


def test_run_page(view_client):
    doc = view_client.get("/api/run").json()
    assert doc["is_run"] and not doc["running"]
    assert doc["rows"] == 7
    assert doc["progress"]["done"] == doc["progress"]["planned"]
    assert doc["summary"]["images"]["written"] == 7
    assert set(doc["summary"]["stages"]) >= {"decode", "depth", "postprocess"}
    assert doc["quarantine"]["total"] == 0


def test_a_run_being_written_shows_as_running(labelled_coco7):
    from distill.runfolder import LabelRun
    from distill.storage import Location
    from distill.writelock import writer_active

    run = LabelRun(labelled_coco7[1])
    assert not writer_active(run.root)
    with run.lock():
        assert writer_active(run.root)
    assert not writer_active(run.root)
    assert not writer_active(Location(labelled_coco7[1] / "no-such-folder"))


@pytest.mark.parametrize("url", [
    "/api/sample/..%2F..%2Fmanifest.json/0",
    "/api/sample/manifest.json/0",
    "/api/sample/../config.toml/0",
    "/thumb/%2e%2e%2fconfig.toml/0.jpg",
    "/image/..%2f..%2f..%2fetc%2fpasswd/0.jpg",
    "/layer/teacher/..%2Fquarantine.parquet/0/depth.png",
    "/layer/../../etc/0/depth.png",
    "/static/../app.py",
    "/static/..%2fapp.py",
    "/static/%2e%2e/%2e%2e/pyproject.toml",
])
def test_nothing_from_a_url_reaches_the_filesystem(view_client, url):
    res = view_client.get(url)
    assert res.status_code in (400, 404), url
    assert b"[project]" not in res.content and b"import" not in res.content


def test_unknown_rows_and_layers_are_404(view_client, labelled_coco7):
    row = _rows(labelled_coco7[1])[0]
    shard, _ = row["_key"].split("/")
    assert view_client.get(f"/api/sample/{shard}/999").status_code == 404
    assert view_client.get(f"/layer/teacher/{shard}/0/nonsense.png").status_code == 404
    assert view_client.get(f"/layer/evil/{shard}/0/depth.png").status_code == 404
    assert "no shard" in view_client.get("/api/sample/val2017-99999.parquet/0").json()["error"]


def test_the_app_writes_nothing_but_its_statistics(labelled_coco7, view_client):
    run = labelled_coco7[1]

    def files() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != VIEW_STATS}

    before = files()
    _complete(view_client, {"sort": "text_share"})
    view_client.get("/api/run")
    assert files() == before and (run / VIEW_STATS).is_file()


def test_static_front_end_is_served(view_client):
    page = view_client.get("/")
    assert page.status_code == 200 and b"/static/app.js" in page.content
    assert view_client.get("/static/app.js").status_code == 200
    meta = view_client.get("/api/meta").json()
    assert meta["is_run"] and meta["student"] is not None
    assert meta["groups"] == list(CLASS_GROUP_NAMES)


def test_a_run_on_object_storage_opens_the_same_way(labelled_coco7, s3_bucket):
    from starlette.testclient import TestClient

    from distill.view import create_app
    from tests.conftest import upload_folder

    uri = upload_folder(labelled_coco7[1], f"{s3_bucket}/run")
    with TestClient(create_app(uri)) as client:
        rows = client.get("/api/rows").json()
        assert rows["total"] == 7
        key = rows["rows"][0]
        thumb = client.get(f"/thumb/{key['shard']}/{key['row']}.jpg")
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
        progress = client.get("/api/run").json()["progress"]
        assert progress["done"] == progress["planned"] > 0


def test_query_validation():
    with pytest.raises(ViewError, match="sort key"):
        Query(sort="area")
    assert not Query().needs_stats and Query(word="dog").needs_stats


def test_a_plain_shards_folder_opens(labelled_coco7):
    view = RunView(labelled_coco7[1] / "shards")
    # a run's shards/ folder is still the run's (its manifest is above it)
    assert view.total_rows() == 7


def _busy_port() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, s.getsockname()[1]


def test_cli_busy_port_and_other_host(labelled_coco7):
    run = str(labelled_coco7[1])
    sock, port = _busy_port()
    try:
        res = CliRunner().invoke(cli_app, ["view", run, "--port", str(port)])
        assert res.exit_code == 2
        assert f"cannot serve on 127.0.0.1:{port}" in res.output and "Traceback" not in res.output
        res = CliRunner().invoke(cli_app, ["view", run, "--host", "0.0.0.0", "--port", str(port)])
        assert res.exit_code == 2 and "warning: serving on 0.0.0.0" in res.output
    finally:
        sock.close()
    res = CliRunner().invoke(cli_app, ["view", "/nonexistent/run"])
    assert res.exit_code == 2 and "does not exist" in res.output
    help_text = CliRunner().invoke(cli_app, ["view", "--help"]).output
    assert "--checkpoint" in help_text and "127.0.0.1" in help_text


def test_shards_committed_later_appear(labelled_coco7, tmp_path):
    """A run that is still going gains shards: the view reads the list again."""
    import shutil

    shards = sorted((labelled_coco7[1] / "shards").glob("*.parquet"))
    assert len(shards) >= 2
    folder = tmp_path / "shards"
    folder.mkdir()
    shutil.copy(shards[0], folder)
    view = RunView(folder)
    first = view.total_rows()
    shutil.copy(shards[1], folder)
    view.refresh(force=True)
    assert view.total_rows() == first + pq.ParquetFile(shards[1]).metadata.num_rows
    assert [c["shard"] for c in view.page(0, 100)][-1] == shards[1].name


def test_a_row_without_a_teacher(labelled_coco7, tmp_path):
    """A row the text teacher did not label: its card says so, the `missing` filter finds it,
    and it has no text layer."""
    from starlette.testclient import TestClient

    from distill.shards import ShardWriter, make_metadata, read_metadata
    from distill.view import create_app

    src = sorted((labelled_coco7[1] / "shards").glob("*.parquet"))[0]
    rows = pq.read_table(src).to_pylist()
    rows[0] |= {"text_png": None, "text_regions": None}
    folder = tmp_path / "shards"
    folder.mkdir()
    meta = read_metadata(src)
    with ShardWriter(folder / src.name, make_metadata(meta["fingerprint"],
                                                       meta.get("provenance") or {})) as w:
        for row in rows:
            w.write_row(row)
    with TestClient(create_app(folder)) as client:
        cards = client.get("/api/rows").json()["rows"]
        assert cards[0]["teachers"]["text"] is False and cards[0]["text_share"] is None
        assert all(c["teachers"]["text"] for c in cards[1:])
        found = _complete(client, {"missing": "text"})
        assert [c["key"] for c in found["rows"]] == [cards[0]["key"]]
        ranked = _complete(client, {"sort": "text_share", "order": "desc"})
        assert ranked["rows"][-1]["key"] == cards[0]["key"]  # no value sorts last
        doc = client.get(f"/api/sample/{src.name}/0").json()
        assert "text" not in doc["layers"] and "depth" in doc["layers"]
        assert client.get(f"/layer/teacher/{src.name}/0/text.png").status_code == 404
        assert not client.get("/api/run").json()["is_run"]


def test_a_deleted_run_folder_is_a_410_naming_it(labelled_coco7, tmp_path, caplog):
    """A run folder deleted while it is served: every page says so, one log line, no
    traceback (tests/view/test_memory.py covers the indexer on a plain shards folder)."""
    import logging
    import shutil

    from starlette.testclient import TestClient

    from distill.view import create_app

    run = shutil.copytree(labelled_coco7[1], tmp_path / "run")
    with TestClient(create_app(run)) as client, caplog.at_level(logging.INFO):
        key = client.get("/api/rows").json()["rows"][-1]
        shutil.rmtree(run)
        for url in (f"/api/sample/{key['shard']}/{key['row']}", "/api/rows", "/api/run",
                    "/api/rows?sort=people"):
            res = client.get(url)
            assert res.status_code == 410, url
            assert res.json()["error"].startswith(f"the run folder {run} is gone"), url
    gone = [r for r in caplog.records if "is gone" in r.getMessage()]
    assert len(gone) == 1 and not any(r.exc_info for r in caplog.records)
