"""After the last shard (DESIGN.md §4, §5): `OUT/vocab.parquet` and `OUT/summary.json`.

Both are derived from the committed shards and the manifest alone, so they are rebuilt the same
whether the run went through in one go, was resumed, or had a teacher added later.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distill.atomic import atomic_write_bytes, atomic_write_table
from distill.config import Config
from distill.labels.glove import load_glove
from distill.labels.tokens import Vocabulary, build_vocabulary
from pipelines.manifest import Manifest
from pipelines.quarantine import read_quarantine, summarise

__all__ = ["column_bytes", "footer_column_bytes", "read_vocabulary", "summarise_run",
           "write_vocabulary"]


def write_vocabulary(out: Path, shard_paths: list[Path], config: Config) -> Vocabulary | None:
    """The top `labels.vocab_size` caption tokens over all shards, with counts and GloVe vectors
    (one scalar scale, DESIGN.md §4), as `OUT/vocab.parquet`: columns rank, word, count, vector.
    None when no shard has tokens (the caption teacher is off)."""
    token_lists: list[list[str]] = []
    for path in shard_paths:
        column = pq.read_table(path, columns=["tokens"]).column("tokens").to_pylist()
        token_lists.extend(t for t in column if t)
    if not token_lists:
        return None
    words = {w for tokens in token_lists for w in tokens}
    glove = load_glove(config.labels.glove, restrict=words)
    vocab = build_vocabulary(token_lists, glove, config.labels.vocab_size)
    dim = vocab.vectors.shape[1] if len(vocab.words) else glove.dim
    table = pa.table({
        "rank": pa.array(range(len(vocab.words)), pa.int32()),
        "word": pa.array(vocab.words, pa.string()),
        "count": pa.array(vocab.counts, pa.int64()),
        "vector": pa.FixedSizeListArray.from_arrays(
            pa.array(vocab.vectors.reshape(-1), pa.float32()), dim),
    })
    meta = {"distill.scale": json.dumps(vocab.scale), "distill.glove": config.labels.glove,
            "distill.captions": json.dumps(len(token_lists))}
    atomic_write_table(out / "vocab.parquet", table.replace_schema_metadata(meta))
    return vocab


def read_vocabulary(path: str | Path) -> Vocabulary:
    """`vocab.parquet` back into a `Vocabulary`."""
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    vectors = np.asarray(table.column("vector").combine_chunks().flatten(), np.float32)
    words = table.column("word").to_pylist()
    dim = table.schema.field("vector").type.list_size
    return Vocabulary(words, table.column("count").to_pylist(),
                      vectors.reshape(len(words), dim), json.loads(meta[b"distill.scale"]))


def footer_column_bytes(meta: pq.FileMetaData) -> dict[str, int]:
    """Compressed bytes per top-level column of one Parquet file, from its footer."""
    totals: dict[str, int] = defaultdict(int)
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            col = group.column(c)
            totals[col.path_in_schema.split(".")[0]] += col.total_compressed_size
    return dict(totals)


def column_bytes(shard_paths: list[Path]) -> tuple[dict[str, int], int]:
    """Compressed bytes per top-level column over all shards, and the row count."""
    totals: dict[str, int] = defaultdict(int)
    rows = 0
    for path in shard_paths:
        meta = pq.ParquetFile(path).metadata
        rows += meta.num_rows
        for name, n in footer_column_bytes(meta).items():
            totals[name] += n
    return dict(totals), rows


def summarise_run(out: Path, manifest: Manifest, roles: list[str],
                  invocation: dict[str, Any]) -> dict[str, Any]:
    """`OUT/summary.json`: images done and quarantined, per-stage images/s (compute time per
    image, summed over every run on this folder), bytes per sample per column."""
    shard_dir = out / "shards"
    paths = [shard_dir / e.name for e in manifest.shards if e.sha256 and
             (shard_dir / e.name).is_file()]
    totals, rows = column_bytes(paths)
    seconds: dict[str, float] = defaultdict(float)
    images: dict[str, float] = defaultdict(float)
    halvings: dict[str, float] = defaultdict(float)
    for entry in manifest.shards:
        for stage, s in entry.stats.get("seconds", {}).items():
            seconds[stage] += s
        for stage, n in entry.stats.get("images", {}).items():
            images[stage] += n
        for role, n in entry.stats.get("oom_halvings", {}).items():
            halvings[role] += n
    failures = read_quarantine(out / "quarantine.parquet")
    planned = sum(len(e.image_ids) for e in manifest.shards)
    in_plan = len({f.image_id for f in failures if f.shard})
    stages = {
        stage: {
            "images": int(images[stage]),
            "seconds": round(seconds[stage], 3),
            "images_per_second": round(images[stage] / seconds[stage], 3)
            if seconds[stage] > 0 else None,
        }
        for stage in ["decode", *roles, "postprocess"] if stage in images
    }
    summary = {
        "fingerprint": manifest.fingerprint,
        "split": manifest.split,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "shards": {"planned": len(manifest.shards),
                   "complete": sum(1 for e in manifest.shards if e.done(roles))},
        "images": {"planned": planned, "written": rows,
                   "quarantined": len({f.image_id for f in failures}),
                   "quarantined_in_plan": in_plan,
                   # planned images neither written nor quarantined: 0 once every shard is done
                   "unaccounted": planned - rows - in_plan},
        "quarantine_rows": len(failures),
        "quarantine": summarise(failures),
        "teachers": {r: stages[r] for r in roles if r in stages},
        "stages": stages,
        "oom_batch_halvings": {r: int(n) for r, n in halvings.items()},
        "bytes": {"total": sum(totals.values()),
                  "per_sample": {k: round(v / rows, 1) for k, v in sorted(totals.items())}
                  if rows else {}},
        "this_invocation": invocation,
    }
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=1).encode())
    return summary
