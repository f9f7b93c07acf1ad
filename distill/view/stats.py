"""Per-row statistics for `distill view`'s filters and sorts, and the file that keeps them
between starts.

- `shard_statistics(shard)`: one shard's rows as a compact Arrow table — every sort key
  (float64, NaN where a teacher did not run), whether each teacher ran (bool), and the row's
  lower-cased captions and tokens (one string) for the word filter.
- `StatsFile`: the statistics of every shard in one Parquet file, each shard's rows under the
  identity it was computed for (the sha256 the run's manifest records for it; for a shard
  outside a run, its size and mtime). A viewer that starts again reads it and computes only
  the shards that are new or changed since.

Where the file lives (`stats_file`):
- a label run on the local disk: beside the run, `RUN/view-stats.parquet`, a run file distill
  owns (`distill.runfolder.VIEW_STATS`; `--new-run` removes it with the rest);
- a run on an object store, a plain shards folder, a glob or a shard: the local cache,
  `$XDG_CACHE_HOME/distill/view/` (`~/.cache/...`), under a name derived from the run's URI or
  path. The viewer is a reader: it does not PUT into a bucket it may only be allowed to read,
  nor write into a folder distill did not make.
The file is written atomically (`distill.storage`). One that is there but not distill's —
unreadable, or without distill's mark in its footer — is never overwritten: the statistics go
to the cache instead (one warning names the file). A folder the viewer cannot write to does the
same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distill.errors import DistillError
from distill.layers.registry import layers, role_markers
from distill.runfolder import LabelRun
from distill.shards import open_shard
from distill.storage import Location, atomic_write_table

__all__ = ["TEACHER_COLUMNS", "ShardStats", "StatsFile", "cache_folder", "shard_statistics",
           "sort_keys", "stats_columns", "stats_file"]

logger = logging.getLogger(__name__)

# The columns that say whether a teacher ran on a row (null: it did not).
TEACHER_COLUMNS = role_markers()
# Sort keys of the row itself; every label layer adds its QA figures (`LabelLayer.statistics`).
_ROW_KEYS = ("image_id", "people", "depth_min", "depth_max", "depth_range", "tokens", "segments",
             "text_regions")
WORDS = "words"
_MARK = b"distill.view_stats"  # the footer key that makes a stats file distill's
VERSION = 1


def sort_keys() -> tuple[str, ...]:
    """Sort keys: the statistics `distill inspect` reports, per row (a plug-in layer's too)."""
    return (*_ROW_KEYS, *(n for layer in layers() for n in layer.statistic_names))


def stats_columns() -> tuple[str, ...]:
    """The shard columns the per-row statistics read."""
    return tuple(dict.fromkeys((
        "image_id", "persons", "depth_min", "depth_max", "tokens", "segments", "text_regions",
        "teacher_captions", "coco_captions", *TEACHER_COLUMNS.values(),
        *(c for layer in layers() for c in layer.stat_columns))))


def teacher_column(role: str) -> str:
    return f"teacher:{role}"


def _schema() -> pa.Schema:
    return pa.schema([*(pa.field(k, pa.float64()) for k in sort_keys()),
                      *(pa.field(teacher_column(r), pa.bool_()) for r in TEACHER_COLUMNS),
                      pa.field(WORDS, pa.string())])


def shard_statistics(location: Location) -> pa.Table:
    """The statistics of every row of one shard, in row order (`_schema`)."""
    pf = open_shard(location)
    have = [c for c in stats_columns() if c in pf.schema_arrow.names]
    names = sort_keys()
    stat_layers = [layer for layer in layers() if layer.statistic_names]
    values: dict[str, list[float]] = {k: [] for k in names}
    ran: dict[str, list[bool]] = {r: [] for r in TEACHER_COLUMNS}
    words: list[str] = []
    nan = float("nan")
    for g in range(pf.num_row_groups):
        table = pf.read_row_group(g, columns=have)
        n = table.num_rows
        cols = {c: table.column(c).to_pylist() for c in table.column_names}
        for c in stats_columns():
            cols.setdefault(c, [None] * n)
        for k in range(n):
            dmin, dmax = cols["depth_min"][k], cols["depth_max"][k]
            tokens = cols["tokens"][k] or []
            row = {
                "image_id": float(cols["image_id"][k]),
                "people": float(len(cols["persons"][k] or [])),
                "depth_min": nan if dmin is None else dmin,
                "depth_max": nan if dmax is None else dmax,
                "depth_range": nan if dmin is None or dmax is None else dmax - dmin,
                "tokens": float(len(tokens)),
                "segments": float(len(cols["segments"][k] or [])),
                "text_regions": float(len(cols["text_regions"][k] or [])),
            }
            for layer in stat_layers:
                stats = layer.statistics({c: cols[c][k] for c in layer.stat_columns}) or {}
                row.update({name: stats.get(name, nan) for name in layer.statistic_names})
            for key in names:
                values[key].append(row[key])
            for role, column in TEACHER_COLUMNS.items():
                ran[role].append(cols[column][k] is not None)
            captions = (cols["teacher_captions"][k] or []) + (cols["coco_captions"][k] or [])
            words.append(" ".join([*captions, *tokens]).lower())
    arrays = [*(pa.array(np.asarray(values[k], np.float64)) for k in names),
              *(pa.array(ran[r], pa.bool_()) for r in TEACHER_COLUMNS),
              pa.array(words, pa.string())]
    return pa.Table.from_arrays(arrays, schema=_schema())


@dataclass(frozen=True)
class ShardStats:
    """One shard's statistics and the identity of the shard they were computed from."""

    key: str
    table: pa.Table

    @property
    def rows(self) -> int:
        return int(self.table.num_rows)


def cache_folder() -> Path:
    """distill's local cache of viewer statistics (`$XDG_CACHE_HOME/distill/view`)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "distill" / "view"


def _cached(spec: Location) -> Location:
    digest = hashlib.sha256(str(spec).encode()).hexdigest()[:16]
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in spec.name)[:40]
    return Location(cache_folder() / f"{name or 'run'}-{digest}.parquet")


def stats_file(path: Location, run: LabelRun | None) -> StatsFile:
    """Where the statistics of the run or shards at `path` are kept (see the module doc)."""
    whole = run is not None and path in (run.root, run.shards)
    if run is not None and whole and run.root.is_local:
        return StatsFile(run.view_stats, fallback=_cached(run.root), source=run.root)
    return StatsFile(_cached(run.root if run is not None and whole else path), source=path)


class StatsFile:
    """The statistics of a run's shards in one Parquet file (`load`, `save`)."""

    def __init__(self, location: Location, fallback: Location | None = None,
                 source: Location | None = None) -> None:
        self.location = location
        self.fallback = fallback
        self.source = source
        self._said: set[str] = set()

    def _ours(self) -> bool | None:
        """Whether the file there is distill's (None: there is none)."""
        try:
            if not self.location.is_file():
                return None
            meta = pq.read_schema(self.location.open_input()).metadata or {}
        except (OSError, pa.ArrowException, DistillError):
            return False
        return _MARK in meta

    def _move_to_fallback(self, why: str) -> bool:
        if self.fallback is None:
            return False
        logger.warning("%s: keeping the viewer's statistics in %s instead", why, self.fallback)
        self.location, self.fallback = self.fallback, None
        return True

    def load(self) -> dict[str, ShardStats]:
        """shard name → its statistics, from the file ({} when there is none yet, or it holds
        statistics of another version or other columns, which are computed again). A file
        that is not distill's is left alone; the cache is read (and written) instead."""
        ours = self._ours()
        if ours is False and self._move_to_fallback(
                f"{self.location} is not a statistics file distill wrote; it is left as it is"):
            ours = self._ours()
        if not ours:
            return {}
        try:
            table = pq.ParquetFile(self.location.open_input()).read()
            doc = json.loads((table.schema.metadata or {})[_MARK])
            if doc.get("version") != VERSION or table.schema.remove_metadata() != _schema():
                return {}
            out, start = {}, 0
            for name, key, rows in doc["shards"]:
                out[str(name)] = ShardStats(str(key), table.slice(start, int(rows))
                                            .replace_schema_metadata(None))
                start += int(rows)
            if start != table.num_rows:
                return {}
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException, DistillError) as exc:
            logger.warning("cannot read the viewer's statistics %s (%s); computing them again",
                           self.location, exc)
            return {}
        logger.info("read the statistics of %d shards from %s", len(out), self.location)
        return out

    def save(self, shards: list[tuple[str, ShardStats]]) -> bool:
        """Write the statistics of `shards` (in run order) atomically; never over a file that is
        not distill's. False (logged once) when they could not be written anywhere."""
        doc = {"by": "distill", "version": VERSION,
               "source": str(self.source) if self.source is not None else None,
               "shards": [[name, s.key, s.rows] for name, s in shards]}
        tables = [s.table for _, s in shards] or [_schema().empty_table()]
        table = pa.concat_tables(tables).replace_schema_metadata({_MARK: json.dumps(doc)})
        while True:
            if self._ours() is False and self._move_to_fallback(
                    f"{self.location} is not a statistics file distill wrote; it is left as "
                    "it is"):
                continue
            if self._ours() is False:
                return self._once(f"{self.location} is not distill's: the viewer's statistics "
                                  "are kept in memory only")
            try:
                atomic_write_table(self.location, table)
                return True
            except DistillError as exc:
                if not self._move_to_fallback(str(exc)):
                    return self._once(f"{exc}: the viewer's statistics are kept in memory only")

    def _once(self, message: str) -> bool:
        if message not in self._said:
            self._said.add(message)
            logger.warning("%s", message)
        return False
