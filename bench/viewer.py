"""`distill view` on a 10k-row run: time to the first page and to the next page of the grid
(the page's cards and all its thumbnails, fetched one after another as a slow browser would),
a page deep in the run, and the statistics every filter and sort needs over all rows.

The run is the loader section's COCO-size shards (real coco-mini images when ../shared is
there) copied until it holds `rows` rows, in shards of 256 rows (row groups of 64), as
generate-labels writes them. Each repeat opens a fresh app (empty caches); the files are in
the OS page cache, as on a laptop that just wrote or read them.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

__all__ = ["bench_viewer", "grown_run"]

PAGE = 48
SHARD_ROWS = 256


def grown_run(source: Path, out: Path, rows: int) -> Path:
    """A shards folder of `rows` rows: `source`'s rows over and over, image ids made unique."""
    import pyarrow.parquet as pq

    from distill.shards import ShardWriter, make_metadata, read_metadata

    if out.is_dir() and sum(pq.ParquetFile(p).metadata.num_rows
                            for p in out.glob("*.parquet")) == rows:
        return out
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(source.glob("*.parquet"))
    base = [r for f in files for r in pq.read_table(f).to_pylist()]
    meta = read_metadata(files[0])
    metadata = make_metadata(meta.get("fingerprint", "bench"), meta.get("provenance") or {})
    written, shard = 0, 0
    while written < rows:
        n = min(SHARD_ROWS, rows - written)
        with ShardWriter(out / f"val2017-{shard:05d}.parquet", metadata, 64) as writer:
            for k in range(written, written + n):
                row = dict(base[k % len(base)])
                row["image_id"] = 10_000_000 + k
                writer.write_row(row)
        written += n
        shard += 1
    return out


def _page(client: Any, offset: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    body = client.get("/api/rows", params={"offset": offset, "limit": PAGE}).json()
    for card in body["rows"]:
        res = client.get(f"/thumb/{card['shard']}/{card['row']}.jpg")
        assert res.status_code == 200
    return time.perf_counter() - t0, len(body["rows"])


def bench_viewer(source: Path, work: Path, rows: int = 10_000, repeat: int = 3,
                 source_what: str = "") -> dict[str, Any]:
    from starlette.testclient import TestClient

    from distill.view import create_app

    folder = grown_run(source, work / "viewer-run", rows)
    first, nxt, deep, opened, stats = [], [], [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        app = create_app(folder)
        opened.append(time.perf_counter() - t0)
        with TestClient(app) as client:
            t, n = _page(client, 0)
            first.append(opened[-1] + t)
            t, _ = _page(client, PAGE)
            nxt.append(t)
            t, _ = _page(client, rows // 2)
            deep.append(t)
        assert n == PAGE
    with TestClient(create_app(folder)) as client:  # statistics for filters and sorts, once
        t0 = time.perf_counter()
        while not client.get("/api/rows", params={"sort": "text_share"}).json()["complete"]:
            time.sleep(0.05)
        stats.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        client.get("/api/rows", params={"sort": "group:Persons", "people_min": 1})
        sorted_query = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in folder.glob("*.parquet"))
    return {
        "rows": rows, "shards": len(list(folder.glob("*.parquet"))), "bytes": size,
        "source": source_what, "page": PAGE, "repeat": repeat,
        "open_s": statistics.median(opened),
        "first_page_s": statistics.median(first),
        "next_page_s": statistics.median(nxt),
        "deep_page_s": statistics.median(deep),
        "statistics_all_rows_s": stats[0],
        "filtered_sorted_query_s": sorted_query,
        "note": "a page = its /api/rows call and its 48 thumbnails fetched one after another "
                "through Starlette's test client; the first page includes opening the run "
                "(every shard's footer); fresh app per repeat, files in the OS page cache",
    }
