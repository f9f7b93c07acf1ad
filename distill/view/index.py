"""What `distill view` knows about a run's rows, read on demand from the shards' footers and
row groups — never the whole run at once.

- `RunView.page(offset, limit)`: a page of grid rows in run order, reading only the row groups
  that hold it (the small columns, and the text mask for its share). A shard's footer is read
  the first time a page needs it; a run's shards are listed with their rows and checksums from
  its manifest, so opening a run reads no shard at all.
- `RunView.query(...)`: filters and sorts (`distill.view.query`) over per-row statistics
  (`distill.view.stats`) that a background thread reads from the statistics file of an
  earlier start, and computes shard by shard for the shards that are new or changed since,
  the first time a filter or a sort asks for them; until it is done, answers say how many
  shards they cover. They are written back to that file as they grow.
- `RunView.row(shard, row)`: one full row, decoded (`distill.shards.decode_row`).

Shards are named by the committed shards of the run (its manifest), or the `*.parquet` files
of a plain folder (`distill.runfolder.resolve_shards`); a name from a URL is only ever looked
up among them, never joined onto a path. Local paths and URIs alike.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from distill.errors import DistillError, RunGone, ShardError, ViewError
from distill.layers.registry import card_columns, get_layer
from distill.manifest import read_manifest
from distill.provenance import random_weight_roles
from distill.runfolder import LabelRun, find_label_run, resolve_shards
from distill.shards import decode_row, open_shard, read_metadata
from distill.storage import Location
from distill.view.memory import LRU
from distill.view.query import CLASS_GROUP_NAMES, Query, select
from distill.view.stats import (
    TEACHER_COLUMNS,
    ShardStats,
    shard_statistics,
    sort_keys,
    stats_columns,
    stats_file,
)

__all__ = ["CLASS_GROUP_NAMES", "GRID_COLUMNS", "SORT_KEYS", "Query", "RunView",
           "grid_columns", "sort_keys", "stats_columns"]

logger = logging.getLogger(__name__)



def grid_columns() -> tuple[str, ...]:
    """Columns a grid card needs: the row's identity, then what the label layers put on a card
    (`LabelLayer.card_columns`; the teachers' presence is read from one small column each)."""
    return ("image_id", "file_name", "width", "height", *card_columns())


GRID_COLUMNS = grid_columns()  # the built-in layers'; `grid_columns()` adds a plug-in's

SORT_KEYS = sort_keys()  # the built-in layers'; `sort_keys()` adds a registered plug-in's
_REFRESH_SECONDS = 5.0  # how often the list of committed shards is read again
_ROW_GROUPS = (8, 64 << 20)  # row groups' columns kept: entries, bytes
_FOOTERS = (1024, 32 << 20)  # shards' footers kept (rows per row group, provenance)
_SAVE_SECONDS = 30.0  # while indexing, write the statistics file at most this often


@dataclass(frozen=True)
class _Footer:
    group_rows: list[int]  # rows per row group
    random_roles: list[str]
    provenance: dict[str, Any]


@dataclass
class _Shard:
    """A shard of the run: its rows and identity (from the manifest, or its footer and file
    info), its footer read when first needed (and kept in a bounded cache)."""

    name: str
    location: Location
    rows: int
    key: str  # what its statistics are keyed by: the manifest's sha256, or size and mtime
    footers: LRU[tuple[str, str], _Footer]

    def footer(self) -> _Footer:
        return self.footers.get_or_make((self.name, self.key), self._read_footer)

    def _read_footer(self) -> _Footer:
        try:
            meta = open_shard(self.location).metadata
            provenance = read_metadata(self.location).get("provenance") or {}
        except (OSError, pa.ArrowException) as exc:
            raise ShardError(f"shard {self.location} cannot be read: {exc}") from exc
        return _Footer([meta.row_group(g).num_rows for g in range(meta.num_row_groups)],
                       random_weight_roles(provenance), provenance)

    @property
    def group_rows(self) -> list[int]:
        return self.footer().group_rows

    @property
    def random_roles(self) -> list[str]:
        return self.footer().random_roles

    @property
    def provenance(self) -> dict[str, Any]:
        return self.footer().provenance


def _text_share(png: bytes | None) -> float | None:
    stats = get_layer("text").statistics({"text_png": png})
    return None if stats is None else stats["text_share"]


def _card(table: pa.Table, i: int, shard: _Shard, row: int, text_share: float | None) -> dict[
        str, Any]:
    """One grid card from row `i` of a table of `grid_columns()`."""
    def col(name: str) -> Any:  # a column the shard lacks (added later: the pose teacher's) is null
        return table.column(name)[i].as_py() if name in table.column_names else None

    captions = col("teacher_captions")
    coco = col("coco_captions") or []
    persons = col("persons") or []
    return {
        "key": f"{shard.name}/{row}", "shard": shard.name, "row": row,
        "image_id": col("image_id"), "file_name": col("file_name"),
        "width": col("width"), "height": col("height"),
        "caption": (captions[0] if captions else "") or (coco[0] if coco else ""),
        "caption_source": "teacher" if captions else ("COCO" if coco else ""),
        "tokens": col("tokens") or [],
        "people": len(persons),
        "text_share": text_share,
        "teachers": {role: col(c) is not None for role, c in TEACHER_COLUMNS.items()},
        "random_weights": shard.random_roles,
    }


class RunView:
    """A label run (a run folder, a shards folder, a glob or a shard; local or a URI), read
    on demand. Thread-safe: the web app's request threads share one."""

    def __init__(self, path: str | Location) -> None:
        self.path = Location(path)
        self.run: LabelRun | None = find_label_run(self.path)
        self._lock = threading.Lock()
        self._shards: dict[str, _Shard] = {}
        self._order: list[str] = []
        self._listed = 0.0
        self._anchor: Location | None = None  # set once the run has been found
        self._vanished = False
        # row groups' columns read for pages and thumbnails (a page's thumbnails share one read)
        self.row_groups: LRU[tuple[str, str, int, tuple[str, ...]], pa.Table] = LRU(
            *_ROW_GROUPS)
        self.footers: LRU[tuple[str, str], _Footer] = LRU(*_FOOTERS)
        self.stats_file = stats_file(self.path, self.run)
        self._stats: dict[str, ShardStats] = {}
        self._stored: dict[str, ShardStats] | None = None  # the file's, until adopted
        self._dirty = False  # statistics computed (or shards gone) since the file was written
        self._saved = time.monotonic()
        self._skipped: dict[str, str] = {}  # shard → the key of the shard it could not read
        self._index_lock = threading.Lock()
        self._indexer: threading.Thread | None = None
        self._quarantine: dict[int, list[tuple[str, str]]] | None = None
        self.refresh(force=True)
        # what must go on existing while the view serves it: the run folder, the folder or
        # shard named, or a glob's folder
        self._anchor = self.run.root if self.run is not None else (
            self.path if self.path.exists() else self.path.parent)

    # -- shards ---------------------------------------------------------------------------

    def refresh(self, force: bool = False) -> None:
        """Read the list of committed shards again (at most every few seconds): a run that is
        still going gains shards; a shard already known stays as it is, but a run's shard
        committed again (another checksum in the manifest) is a new shard."""
        if not force and not self._vanished and time.monotonic() - self._listed < _REFRESH_SECONDS:
            return  # (a run found gone is looked for at every call, to say so or to come back)
        try:
            found = resolve_shards(self.path)
            committed = self._committed()
        except ShardError:
            gone = self.gone()
            if gone is not None:
                raise gone from None
            if self.run is None:
                raise
            found, committed = [], {}  # a run that has committed nothing yet
        shards = {}
        for loc in found:
            known = self._shards.get(loc.name)
            entry = committed.get(loc.name) if loc.parent == self._run_shards() else None
            if known is not None and (entry is None or known.key == entry[0]):
                shards[loc.name] = known
            else:
                shards[loc.name] = self._open(loc, entry)
        with self._lock:
            self._shards = shards
            self._order = [loc.name for loc in found]
            self._listed = time.monotonic()
            self._quarantine = None
            self._vanished = False

    def _run_shards(self) -> Location | None:
        return self.run.shards if self.run is not None else None

    def _committed(self) -> dict[str, tuple[str, int]]:
        """The run's committed shards: name → (identity, rows), from its manifest."""
        if self.run is None:
            return {}
        return {e.name: (f"sha256:{e.sha256}", e.rows)
                for e in read_manifest(self.run.manifest).shards
                if e.sha256 is not None and e.rows is not None}

    def _open(self, loc: Location, entry: tuple[str, int] | None) -> _Shard:
        if entry is not None:  # a run's shard: nothing to read
            return _Shard(loc.name, loc, entry[1], entry[0], self.footers)
        info = loc.fs.get_file_info(loc.path)
        key = f"stat:{info.size}:{info.mtime_ns}"
        shard = _Shard(loc.name, loc, 0, key, self.footers)
        shard.rows = sum(shard.group_rows)
        return shard

    def gone(self) -> RunGone | None:
        """The error to answer with when the run no longer exists (deleted or moved while the
        viewer serves it), else None. Logs one line when it first finds the run gone."""
        try:
            if self._anchor is None or self._anchor.exists():
                return None  # (None: still opening; its errors say what is wrong)
        except (OSError, DistillError):
            return None  # cannot tell (storage unreachable): the request's own error stands
        with self._lock:
            first, self._vanished = not self._vanished, True
        what = f"the run folder {self._anchor}" if self.run is not None else str(self._anchor)
        error = RunGone(f"{what} is gone (deleted or moved while `distill view` served it); "
                        "restart `distill view` on a run that exists")
        if first:
            logger.warning("%s", error)
        return error

    def shards(self) -> list[_Shard]:
        self.refresh()
        with self._lock:
            return [self._shards[n] for n in self._order]

    def shard(self, name: str) -> _Shard:
        """The shard called `name` (looked up, never joined onto a path)."""
        self.refresh()
        with self._lock:
            found = self._shards.get(name)
        if found is None:
            raise ViewError(f"no shard {name!r} in this run")
        return found

    def total_rows(self) -> int:
        return sum(s.rows for s in self.shards())

    # -- reading --------------------------------------------------------------------------

    def _group(self, shard: _Shard, group: int, columns: tuple[str, ...]) -> pa.Table:
        return self.row_groups.get_or_make((shard.name, shard.key, group, columns),
                                           lambda: _read_group(shard.location, group, columns))

    def _locate(self, shard: _Shard, row: int) -> tuple[int, int]:
        if not 0 <= row < shard.rows:
            raise ViewError(f"shard {shard.name} has rows 0..{shard.rows - 1}, not {row}")
        first = 0
        for g, n in enumerate(shard.group_rows):
            if row < first + n:
                return g, row - first
            first += n
        raise ShardError(f"shard {shard.location}: row groups hold fewer rows than its footer")

    def cells(self, name: str, row: int, columns: tuple[str, ...]) -> dict[str, Any]:
        """Some values of one row (e.g. the image bytes and size for a thumbnail), reading
        only those columns of its row group, cached: a page's thumbnails share one read. A
        column older shards lack reads as None."""
        shard = self.shard(name)
        group, i = self._locate(shard, row)
        table = self._group(shard, group, columns)
        return {c: table.column(c)[i].as_py() if c in table.column_names else None
                for c in columns}

    def row(self, name: str, row: int) -> dict[str, Any]:
        """One full row as stored (Python values)."""
        shard = self.shard(name)
        group, i = self._locate(shard, row)
        table = _read_group(shard.location, group).slice(i, 1)
        values: dict[str, Any] = table.to_pylist()[0]
        return values

    def sample(self, name: str, row: int) -> Any:
        return decode_row(self.row(name, row))

    def card(self, shard: _Shard, row: int) -> dict[str, Any]:
        """The grid card of one row."""
        group, i = self._locate(shard, row)
        table = self._group(shard, group, grid_columns())
        return _card(table, i, shard, row, _text_share(table.column("text_png")[i].as_py()))

    def page(self, offset: int, limit: int) -> list[dict[str, Any]]:
        """Grid cards of rows offset .. offset + limit − 1, in run order."""
        cards: list[dict[str, Any]] = []
        start = 0
        for shard in self.shards():
            if len(cards) >= limit:
                break
            if offset < start + shard.rows:
                lo, hi = max(offset - start, 0), min(offset + limit - start, shard.rows)
                cards += [self.card(shard, r) for r in range(lo, hi)]
            start += shard.rows
        return cards

    # -- statistics, filters, sorts -------------------------------------------------------

    def _fresh(self, shard: _Shard) -> bool:
        got = self._stats.get(shard.name)
        return got is not None and got.key == shard.key and got.rows == shard.rows

    def index_step(self) -> bool:
        """Bring the statistics of the next shard up to date: from the statistics file when
        it holds them for this very shard, else computed. False when there is none left (the
        file is then written, if anything changed). A shard that cannot be read is logged once
        and skipped; a run that is gone stops the indexing (`gone` said so, once)."""
        with self._index_lock:
            try:
                shards = self.shards()
            except DistillError:
                return False  # the request that asked says why (a gone run, no shards left)
            if self._stored is None:
                self._stored = self.stats_file.load()
                pa.default_memory_pool().release_unused()  # the file's decoding buffers
                self._dirty = bool(set(self._stored) - {s.name for s in shards})
            todo = []
            for s in shards:
                if self._fresh(s) or self._skipped.get(s.name) == s.key:
                    continue
                stored = self._stored.pop(s.name, None)
                if stored is not None and stored.key == s.key and stored.rows == s.rows:
                    self._stats[s.name] = stored
                else:
                    todo.append(s)
            if not todo:
                self._save(shards)
                return False
            shard = todo[0]
            try:
                self._stats[shard.name] = ShardStats(shard.key, shard_statistics(shard.location))
                self._dirty = True
            except DistillError as exc:
                if self.gone() is not None:
                    return False
                logger.warning("no statistics for shard %s: %s", shard.name, exc)
                self._skipped[shard.name] = shard.key
            if time.monotonic() - self._saved > _SAVE_SECONDS:
                self._save(shards)
            return True

    def _save(self, shards: list[_Shard]) -> None:
        """Write the statistics of `shards` that are up to date, when any changed."""
        if not self._dirty:
            return
        self._dirty = False
        self._saved = time.monotonic()
        self.stats_file.save([(s.name, self._stats[s.name]) for s in shards if self._fresh(s)])

    def _index(self) -> None:
        while self.index_step():
            pass

    def start_index(self) -> None:
        """Compute the statistics of every shard in a background thread (once; again for
        shards committed since; not while the run is gone)."""
        with self._lock:
            if self._vanished or (self._indexer is not None and self._indexer.is_alive()):
                return
            self._indexer = threading.Thread(target=self._index, name="distill-view-index",
                                             daemon=True)
            self._indexer.start()

    def index_status(self) -> dict[str, int]:
        """Shards and rows the statistics cover; `skipped`: shards they never will (unreadable,
        logged), counted as done."""
        shards = self.shards()
        fresh = [s for s in shards if self._fresh(s)]
        return {"shards": len(shards), "indexed": len(fresh),
                "skipped": sum(self._skipped.get(s.name) == s.key for s in shards),
                "rows": sum(s.rows for s in shards),
                "indexed_rows": sum(s.rows for s in fresh)}

    def quarantined(self) -> dict[int, list[tuple[str, str]]]:
        """image id → (stage, "type: reason") of its quarantine entries."""
        if self._quarantine is None:
            out: dict[int, list[tuple[str, str]]] = {}
            for f in self.failures():
                out.setdefault(f.image_id, []).append((f.stage, f"{f.error_type}: {f.message}"))
            self._quarantine = out
        return self._quarantine

    def failures(self) -> list[Any]:
        """The run's quarantine entries ([] for a plain shards folder or none yet)."""
        from distill.quarantine import read_quarantine

        if self.run is None or not self.run.quarantine.is_file():
            return []
        return read_quarantine(self.run.quarantine)

    def query(self, q: Query, offset: int, limit: int) -> dict[str, Any]:
        """A page of the rows that pass `q`, in its order, over the shards indexed so far."""
        if not q.needs_stats:
            return {"rows": self.page(offset, limit), "total": self.total_rows(),
                    "complete": True, "index": self.index_status()}
        self.start_index()
        status = self.index_status()
        indexed = [s for s in self.shards() if self._fresh(s)]
        if not indexed:
            return {"rows": [], "total": 0, "complete": _complete(status), "index": status}
        table = pa.concat_tables([self._stats[s.name].table for s in indexed])
        chosen, key = select(q, table, self.quarantined)
        starts = np.cumsum([0, *(s.rows for s in indexed)])
        page = []
        for i in chosen[offset:offset + limit]:
            k = int(np.searchsorted(starts, i, side="right")) - 1
            card = self.card(indexed[k], int(i - starts[k]))
            page.append(card | {"sort_value": None if key is None else _finite(key[i])})
        return {"rows": page, "total": int(chosen.size),
                "complete": _complete(status), "index": status}


def _complete(status: dict[str, int]) -> bool:
    return status["indexed"] + status["skipped"] == status["shards"]


def _read_group(location: Location, group: int,
                columns: tuple[str, ...] | None = None) -> pa.Table:
    """Row group `group` of a shard (only `columns`, those it has; all when None); a shard
    that cannot be read is a ShardError naming it."""
    try:
        pf = open_shard(location)
        have = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
        return pf.read_row_group(group, columns=have)
    except (OSError, pa.ArrowException) as exc:
        raise ShardError(f"shard {location} cannot be read: {exc}") from exc


def _finite(x: float) -> float | None:
    return None if np.isnan(x) else float(x)
