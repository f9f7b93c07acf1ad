"""After the last shard (DESIGN.md §4, §5): `OUT/vocab.parquet` and `OUT/summary.json`.

Both are derived from the committed shards and the manifest alone, so they are rebuilt the same
whether the run went through in one go, was resumed, or had a teacher added later.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any

from distill.config import Config
from distill.labels.tokens import Vocabulary, vocabulary_from_shards, write_vocabulary_file
from distill.manifest import Manifest
from distill.quarantine import read_quarantine, summarise
from distill.runfolder import LabelRun
from distill.shards import column_bytes
from distill.storage import Location, atomic_write_bytes

__all__ = ["summarise_run", "write_vocabulary"]


def write_vocabulary(out: LabelRun, shard_paths: list[Location],
                     config: Config) -> Vocabulary | None:
    """The top `labels.vocab_size` caption tokens over all shards, with counts and GloVe vectors
    (one scalar scale, DESIGN.md §4), as `OUT/vocab.parquet`: columns rank, word, count, vector.
    None when no shard has tokens (the caption teacher is off)."""
    built = vocabulary_from_shards(shard_paths, config.labels.glove, config.labels.vocab_size)
    if built is None:
        return None
    vocab, meta = built
    write_vocabulary_file(out.vocab, vocab, vocab.dim, meta)
    return vocab


def summarise_run(out: LabelRun, manifest: Manifest, roles: list[str],
                  invocation: dict[str, Any]) -> dict[str, Any]:
    """`OUT/summary.json`: images done and quarantined, per-stage images/s (compute time per
    image, summed over every run on this folder), bytes per sample per column."""
    present = {f.name for f in out.shards.files("*.parquet")}
    paths = [out.shard(e.name) for e in manifest.shards if e.sha256 and e.name in present]
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
    failures = read_quarantine(out.quarantine)
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
    atomic_write_bytes(out.summary, json.dumps(summary, indent=1).encode())
    return summary
