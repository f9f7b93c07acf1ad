"""The run manifest at scale (issue 31, items 2 and 3): what a resume's completeness check and a
commit cost as a run grows.

- Resume check: `distill.manifest.shard_is_complete` over every committed shard of a synthetic
  run, by metadata (size, footer, local inode and mtime: what a resume does) and with
  `verify=True` (the sha256 of every byte: `--verify-shards`, and what every resume did
  before). Many small shards give the per-shard cost at a million images' shard count; fewer
  large shards the hashing rate, from which a 100k- and a 1M-image run are extrapolated.
- Per-commit bytes: a plan of 10k / 100k / 1M images (shards of 1000, the config's default)
  written as planning writes it, then shards committed through the API `Committer.commit` calls
  (`record_commit`), against the whole-manifest rewrite every commit made before.

No labelling, no Ray: the shards are Parquet files of random bytes with the manifest's row
counts. The page cache is warm (the files were just written): hashing is CPU-bound here, and
slower from a cold disk or an object store.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["bench_manifest", "summary_lines"]

MB = 1e6
ROW_BYTES = 384_000  # a COCO row with every teacher's labels (issue 31)
SHARD_SIZE = 1000  # the config's default images per shard
PLANS = (10_000, 100_000, 1_000_000)


def _shard(path: Path, rows: int, row_bytes: int, seed: int) -> None:
    blobs = np.random.default_rng(seed).integers(0, 256, (rows, row_bytes), np.uint8)
    table = pa.table({"image_id": pa.array(range(rows), pa.int64()),
                      "blob": pa.array([b.tobytes() for b in blobs], pa.binary())})
    pq.write_table(table, path, compression="none")


def _committed_run(folder: Path, shards: int, rows: int, row_bytes: int) -> tuple[Any, Path]:
    """A manifest of `shards` committed shards (copies of one file: each its own inode)."""
    from distill.manifest import Manifest, local_identity, make_plan
    from distill.storage import file_sha256

    folder.mkdir(parents=True, exist_ok=True)
    first = folder / "template.parquet"
    _shard(first, rows, row_bytes, 0)
    sha, size = file_sha256(first), first.stat().st_size
    manifest = Manifest("train2017", "bench", {}, rows,
                        make_plan(list(range(shards * rows)), "train2017", rows))
    for entry in manifest.shards:
        path = folder / entry.name
        shutil.copyfile(first, path)
        entry.rows, entry.sha256, entry.size = rows, sha, size
        entry.inode, entry.mtime_ns = local_identity(path)
    first.unlink()
    return manifest, folder


def _check(manifest: Any, folder: Path, verify: bool, repeat: int) -> float:
    from distill.manifest import shard_is_complete

    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        assert all(shard_is_complete(folder / e.name, e, verify) for e in manifest.shards)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_resume(work: Path, repeat: int = 3) -> dict[str, Any]:
    many, folder = _committed_run(work / "many", 1000, 8, 1000)
    meta_many = _check(many, folder, False, repeat)
    big, big_folder = _committed_run(work / "big", 24, 100, 400_000)
    meta_big = _check(big, big_folder, False, repeat)
    hash_big = _check(big, big_folder, True, repeat)
    big_bytes = sum(e.size for e in big.shards)
    shutil.rmtree(work / "many")
    shutil.rmtree(work / "big")
    per_shard = meta_many / len(many.shards)
    rate = big_bytes / hash_big
    return {
        "many_shards": len(many.shards), "many_metadata_s": meta_many,
        "metadata_ms_per_shard": per_shard * 1e3,
        "big_shards": len(big.shards), "big_bytes": big_bytes,
        "big_metadata_s": meta_big, "big_verify_s": hash_big, "hash_mb_per_s": rate / MB,
        "projected": {str(n): {"shards": n // SHARD_SIZE, "bytes": n * ROW_BYTES,
                               "metadata_s": n // SHARD_SIZE * per_shard,
                               "verify_s": n * ROW_BYTES / rate} for n in PLANS[1:]},
    }


def bench_commit_bytes(work: Path, commits: int = 5) -> dict[str, Any]:
    """Bytes and seconds a commit writes for the manifest, now and as a whole rewrite."""
    from distill.manifest import Manifest, make_plan, record_commit, write_manifest
    from distill.runfolder import LabelRun

    out: dict[str, Any] = {}
    for n in PLANS:
        run = LabelRun(work / f"plan-{n}")
        manifest = Manifest("train2017", "bench", {}, SHARD_SIZE,
                            make_plan(list(range(n)), "train2017", SHARD_SIZE))
        t0 = time.perf_counter()
        write_manifest(run.manifest, manifest)
        plan_s = time.perf_counter() - t0
        plan_bytes = run.manifest.size()
        records, record_s = [], []
        for entry in manifest.shards[:commits]:
            entry.rows, entry.sha256, entry.size = SHARD_SIZE, "ab" * 32, SHARD_SIZE * ROW_BYTES
            entry.inode, entry.mtime_ns, entry.annotations = 1 << 40, 1 << 60, "cd" * 32
            entry.teachers = {r: "done" for r in ("depth", "panoptic", "text", "caption")}
            entry.stats = {"seconds": {"decode": 12.5, "depth": 310.2}, "images": {"decode": 1000},
                           "oom_halvings": {}}
            t0 = time.perf_counter()
            records.append(record_commit(run.manifest, manifest, entry))
            record_s.append(time.perf_counter() - t0)
        for entry in manifest.shards[commits:]:  # the last commit of a run: every shard done
            entry.rows, entry.sha256, entry.size = SHARD_SIZE, "ab" * 32, SHARD_SIZE * ROW_BYTES
            entry.inode, entry.mtime_ns, entry.annotations = 1 << 40, 1 << 60, "cd" * 32
            entry.teachers, entry.stats = manifest.shards[0].teachers, manifest.shards[0].stats
        whole = json.dumps(asdict(manifest), sort_keys=True, separators=(",", ":")).encode()
        t0 = time.perf_counter()
        write_manifest(run.manifest, manifest)  # what every commit did before (and compaction)
        whole_s = time.perf_counter() - t0
        shutil.rmtree(run.root.as_path())
        out[str(n)] = {"shards": len(manifest.shards), "plan_bytes": plan_bytes,
                       "plan_write_s": plan_s, "record_bytes": max(records),
                       "record_write_s": statistics.median(record_s),
                       "whole_rewrite_bytes": len(whole), "whole_rewrite_s": whole_s}
    return out


def bench_manifest(work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    return {"load_average": list(os.getloadavg()), "cpu_count": os.cpu_count(),
            "resume": bench_resume(work / "resume"),
            "commit": bench_commit_bytes(work / "commit")}


def summary_lines(mf: Any) -> list[str]:
    lines = ["", "## Manifest at scale: resume check and bytes per commit"]
    if mf is None:
        return [*lines, "", "(not run)"]
    if "error" in mf:
        return [*lines, "", f"failed: {mf['error']}"]
    r, load = mf["resume"], max(mf["load_average"])
    lines += ["", f"Resume check (`shard_is_complete` over every committed shard, local disk, warm "
              f"page cache; 1-minute load average up to {load:.1f} on {mf['cpu_count']} cores): "
              f"by metadata (size, footer, inode and mtime) {r['many_shards']} shards take "
              f"**{r['many_metadata_s']:.2f} s** ({r['metadata_ms_per_shard']:.2f} ms per shard, "
              f"whatever its size); {r['big_shards']} shards of "
              f"{r['big_bytes'] / r['big_shards'] / MB:.0f} MB ({r['big_bytes'] / 1e9:.1f} GB) "
              f"take {r['big_metadata_s'] * 1e3:.1f} ms by metadata and {r['big_verify_s']:.1f} s hashed "
              f"(`--verify-shards`, and every resume before: {r['hash_mb_per_s']:.0f} MB/s).", "",
              "| planned images (shards of 1000, 384 kB/row) | shards | bytes | resume check now "
              "(projected) | hashed, as before (projected) |", "|---:|---:|---:|---:|---:|"]
    for n, p in r["projected"].items():
        lines.append(f"| {int(n):,} | {p['shards']:,} | {p['bytes'] / 1e9:.0f} GB | "
                     f"{p['metadata_s']:.2f} s | {p['verify_s'] / 60:.0f} min |")
    lines += ["", "Manifest bytes written per commit (shards of 1000; the whole rewrite is the "
              "manifest with every shard committed, what each commit wrote before):", "",
              "| planned images | shards | plan (written once per plan or growth) | per commit "
              "now: its record | per commit before: whole rewrite |",
              "|---:|---:|---:|---:|---:|"]
    for n, c in mf["commit"].items():
        lines.append(f"| {int(n):,} | {c['shards']:,} | {c['plan_bytes'] / MB:.2f} MB | "
                     f"**{c['record_bytes']} B** ({c['record_write_s'] * 1e3:.1f} ms) | "
                     f"{c['whole_rewrite_bytes'] / MB:.2f} MB ({c['whole_rewrite_s']:.2f} s) |")
    return lines
