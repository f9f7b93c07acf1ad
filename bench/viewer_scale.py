"""`distill view` on a train2017-size run (118,287 rows): opening it and its first page, and the
statistics every filter and sort needs, on a cold start (no statistics file yet) and on a warm
one (the file an earlier start wrote), each in a fresh process as after a restart, with that
process's resident memory.

The run is synthetic and small on disk: a 64-row shard of small rows (`tests.test_shards`'
`make_sample`: 32×24 images, every teacher's layers) replicated with new image ids into shards
of 256 rows, with a manifest as generate-labels writes it — no teacher runs. Small rows make
the per-row statistics cheaper to compute than COCO-size ones (the `viewer` section measures
those); what a warm start reads does not depend on the images' size.

usage: python -m bench.viewer_scale RUN   (one start: prints its figures as JSON)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["bench_viewer_scale", "scale_run"]

ROWS = 118_287
PAGE = 48


def scale_run(work: Path, rows: int = ROWS) -> Path:
    """A label run folder of `rows` small rows (made once, kept in `work`)."""
    from bench.viewer import SHARD_ROWS, grown_run
    from distill.manifest import Manifest, ShardEntry, write_manifest
    from distill.runfolder import LabelRun
    from distill.storage import file_sha256
    from tests.test_shards import make_sample
    from tests.test_viz import write_shard

    run = LabelRun(work / f"viewer-scale-{rows}")
    if run.is_run():
        return run.root.as_path()
    base = work / "viewer-scale-base"
    base.mkdir(parents=True, exist_ok=True)
    write_shard(base / "val2017-00000.parquet", [make_sample(i) for i in range(64)], 64)
    grown_run(base, run.shards.as_path(), rows)
    entries, first = [], 0
    for path in sorted(run.shards.as_path().glob("*.parquet")):
        n = min(SHARD_ROWS, rows - first)
        entries.append(ShardEntry(path.name, list(range(10_000_000 + first,
                                                        10_000_000 + first + n)),
                                  {"depth": "done"}, n, file_sha256(path), path.stat().st_size))
        first += n
    write_manifest(run.manifest, Manifest("val2017", "bench", {}, SHARD_ROWS, entries))
    return run.root.as_path()


def _rss() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) // 1024
    return out


def one_start(run: str) -> dict[str, Any]:
    """One start of the app on `run`, as a user's: open it, its first page with thumbnails,
    then a sorted query until its statistics cover the run, then a filtered sorted one."""
    from starlette.testclient import TestClient

    from distill.view import create_app

    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    app = create_app(run)
    out["open_s"] = time.perf_counter() - t0
    with TestClient(app) as client:
        body = client.get("/api/rows", params={"offset": 0, "limit": PAGE}).json()
        for card in body["rows"]:
            assert client.get(f"/thumb/{card['shard']}/{card['row']}.jpg").status_code == 200
        out["first_page_s"] = time.perf_counter() - t0
        out["rows"] = body["total"]
        out["rss_first_page_mib"] = _rss()["VmRSS"]
        t1 = time.perf_counter()
        while not client.get("/api/rows", params={"sort": "text_share"}).json()["complete"]:
            time.sleep(0.2)
        out["statistics_s"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        got = client.get("/api/rows", params={"sort": "group:Persons", "people_min": 1,
                                              "word": "cat"}).json()
        out["filtered_sorted_query_s"] = time.perf_counter() - t1
        assert got["complete"] and got["total"] > 0
        out["rss_statistics_mib"] = _rss()["VmRSS"]
    out["peak_rss_mib"] = _rss()["VmHWM"]
    return out


def _child(run: Path) -> dict[str, Any]:
    res = subprocess.run([sys.executable, "-m", "bench.viewer_scale", str(run)],
                         capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return result


def bench_viewer_scale(work: Path, rows: int = ROWS, warm_repeat: int = 3) -> dict[str, Any]:
    from distill.runfolder import LabelRun

    run = scale_run(work, rows)
    stats = LabelRun(run).view_stats.as_path()
    stats.unlink(missing_ok=True)
    cold = _child(run)
    warm = [_child(run) for _ in range(warm_repeat)]
    best = sorted(warm, key=lambda w: w["first_page_s"])[len(warm) // 2]  # the median start
    size = sum(p.stat().st_size for p in (run / "shards").glob("*.parquet"))
    return {
        "rows": cold["rows"], "shards": len(list((run / "shards").glob("*.parquet"))),
        "bytes": size, "statistics_file_bytes": stats.stat().st_size, "page": PAGE,
        "cold": cold, "warm": best, "warm_repeat": warm_repeat,
        "note": "each start a fresh process (python -m bench.viewer_scale) on the same run; "
                "cold: no statistics file, warm: the file the cold start wrote; a page = its "
                "/api/rows call and its 48 thumbnails through Starlette's test client; files "
                "in the OS page cache",
    }


if __name__ == "__main__":
    print(json.dumps(one_start(sys.argv[1])), flush=True)


def viewer_scale_lines(vs: Any) -> list[str]:
    """RESULTS.md's section for `bench_viewer_scale`."""
    lines = ["", "## Viewer at train2017 size (`distill view`, restarts)"]
    if vs is None or "error" in vs:
        return lines + ([] if vs is None else ["", f"failed: {vs['error']}"])
    cold, warm = vs["cold"], vs["warm"]

    def row(what: str, key: str, fmt: str = ".2f", bold: bool = False) -> str:
        b = "**" if bold else ""
        return f"| {what} | {cold[key]:{fmt}} | {b}{warm[key]:{fmt}}{b} |"

    return [
        *lines, "", f"A {vs['rows']:,}-row label run ({vs['shards']} shards, "
        f"{vs['bytes'] / 1e9:.2f} GB of small synthetic rows, a manifest as generate-labels "
        f"writes it; statistics file {vs['statistics_file_bytes'] / 1e6:.1f} MB): {vs['note']}. "
        f"Warm: the median of {vs['warm_repeat']} starts. Before the statistics file every "
        "start was a cold one, and held a dict per row; the statistics of every row now take "
        "~230 bytes each in memory (Arrow columns).", "",
        "| step | cold start (s) | warm start (s) |", "|---|---:|---:|",
        row("open the run (its manifest; no shard read)", "open_s", ".3f"),
        row("open + first page (cards and 48 thumbnails)", "first_page_s", ".3f", bold=True),
        row("statistics of every row, for filters and sorts", "statistics_s", ".2f", bold=True),
        row("a filtered, sorted query once they are there", "filtered_sorted_query_s", ".3f"),
        "", "| resident memory (MiB) | cold start | warm start |", "|---|---:|---:|",
        row("after the first page", "rss_first_page_mib", "d"),
        row("with the statistics of every row", "rss_statistics_mib", "d"),
        row("peak", "peak_rss_mib", "d"),
    ]
