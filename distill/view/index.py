"""What `distill view` knows about a run's rows, read on demand from the shards' footers and
row groups — never the whole run at once.

- `RunView.page(offset, limit)`: a page of grid rows in run order, reading only the row groups
  that hold it (the small columns, and the text mask for its share).
- `RunView.query(...)`: filters and sorts over per-row statistics (people, class-group and text
  shares, depth range, words, teachers present) that a background thread computes shard by
  shard the first time a filter or a sort asks for them; until it is done, answers say how
  many shards they cover.
- `RunView.row(shard, row)`: one full row, decoded (`distill.shards.decode_row`).

Shards are named by the committed shards of the run (its manifest), or the `*.parquet` files
of a plain folder (`distill.runfolder.resolve_shards`); a name from a URL is only ever looked
up among them, never joined onto a path. Local paths and URIs alike.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from distill.errors import DistillError, RunGone, ShardError, ViewError
from distill.layers.groups import CLASS_GROUPS as CLASS_GROUP_NAMES
from distill.layers.registry import card_columns, get_layer, layers, role_markers
from distill.provenance import random_weight_roles
from distill.runfolder import LabelRun, find_label_run, resolve_shards
from distill.shards import decode_row, open_shard, read_metadata
from distill.storage import Location
from distill.view.memory import LRU

__all__ = ["CLASS_GROUP_NAMES", "GRID_COLUMNS", "SORT_KEYS", "Query", "RunView",
           "grid_columns", "sort_keys", "stats_columns"]

logger = logging.getLogger(__name__)



def grid_columns() -> tuple[str, ...]:
    """Columns a grid card needs: the row's identity, then what the label layers put on a card
    (`LabelLayer.card_columns`; the teachers' presence is read from one small column each)."""
    return ("image_id", "file_name", "width", "height", *card_columns())


GRID_COLUMNS = grid_columns()  # the built-in layers'; `grid_columns()` adds a plug-in's
# The columns that say whether a teacher ran on a row (null: it did not).
TEACHER_COLUMNS = role_markers()
# Sort keys of the row itself; every label layer adds its QA figures (`LabelLayer.statistics`).
_ROW_KEYS = ("image_id", "people", "depth_min", "depth_max", "depth_range", "tokens", "segments",
             "text_regions")


def stats_columns() -> tuple[str, ...]:
    """The columns the per-row statistics read: a card's and every layer's QA columns."""
    return tuple(dict.fromkeys((*GRID_COLUMNS, "depth_max",
                                *(c for layer in layers() for c in layer.stat_columns))))


def sort_keys() -> tuple[str, ...]:
    """Sort keys: the statistics `distill inspect` reports, per row (a plug-in layer's too)."""
    return (*_ROW_KEYS, *(n for layer in layers() for n in layer.statistic_names))


SORT_KEYS = sort_keys()  # the built-in layers'; `sort_keys()` adds a registered plug-in's
_REFRESH_SECONDS = 5.0  # how often the list of committed shards is read again
_ROW_GROUPS = (8, 64 << 20)  # row groups' columns kept: entries, bytes


@dataclass
class _Shard:
    name: str
    location: Location
    rows: int
    group_rows: list[int]  # rows per row group
    random_roles: list[str]
    provenance: dict[str, Any]


@dataclass
class Query:
    """A filter and an order over the rows (every field optional)."""

    group: str = ""  # a class group that must cover at least `min_share` of the pixels
    min_share: float = 0.0
    text_min: float = 0.0  # text share of the pixels at least this
    people_min: int = 0
    people_max: int | None = None
    word: str = ""  # in a caption (teacher or COCO) or the tokens, case-insensitive
    missing: str = ""  # a teacher role that did not run on the row
    quarantined: str = ""  # a quarantine stage (or "any") that also recorded the image
    reason: str = ""  # a substring of that quarantine entry's reason
    sort: str = ""
    descending: bool = True

    def __post_init__(self) -> None:
        if self.group and self.group not in CLASS_GROUP_NAMES:
            raise ViewError(f"unknown class group {self.group!r}; the groups are "
                            + ", ".join(CLASS_GROUP_NAMES))
        if self.sort and self.sort not in sort_keys():
            raise ViewError(f"unknown sort key {self.sort!r}; sort by one of "
                            + ", ".join(sort_keys()))
        if self.missing and self.missing not in TEACHER_COLUMNS:
            raise ViewError(f"unknown teacher {self.missing!r}; the teachers are "
                            + ", ".join(TEACHER_COLUMNS))

    @property
    def needs_stats(self) -> bool:
        return any((self.group, self.text_min, self.people_min, self.people_max is not None,
                    self.word, self.missing, self.quarantined, self.reason, self.sort))


def _text_share(png: bytes | None) -> float | None:
    stats = get_layer("text").statistics({"text_png": png})
    return None if stats is None else stats["text_share"]


def _card(table: pa.Table, i: int, shard: _Shard, row: int, text_share: float | None) -> dict[
        str, Any]:
    """One grid card from row `i` of a table of `grid_columns()`."""
    def col(name: str) -> Any:
        return table.column(name)[i].as_py()

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


@dataclass
class _Stats:
    """Per-row statistics of one shard, for filters and sorts (numpy columns)."""

    cards: list[dict[str, Any]]
    values: dict[str, np.ndarray] = field(default_factory=dict)  # SORT_KEYS → float64
    words: list[str] = field(default_factory=list)  # lower-cased captions and tokens


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
        self.row_groups: LRU[tuple[str, int, tuple[str, ...]], pa.Table] = LRU(*_ROW_GROUPS)
        self._stats: dict[str, _Stats] = {}
        self._skipped: dict[str, str] = {}  # shard → why the indexer could not read it
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
        still going gains shards; a shard already read keeps its footer."""
        if not force and not self._vanished and time.monotonic() - self._listed < _REFRESH_SECONDS:
            return  # (a run found gone is looked for at every call, to say so or to come back)
        try:
            found = resolve_shards(self.path)
        except ShardError:
            gone = self.gone()
            if gone is not None:
                raise gone from None
            if self.run is None:
                raise
            found = []  # a run that has committed nothing yet
        shards = {}
        for loc in found:
            known = self._shards.get(loc.name)
            shards[loc.name] = known if known is not None else self._open(loc)
        with self._lock:
            self._shards = shards
            self._order = [loc.name for loc in found]
            self._listed = time.monotonic()
            self._quarantine = None
            self._vanished = False

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

    @staticmethod
    def _open(loc: Location) -> _Shard:
        meta = open_shard(loc).metadata
        provenance = read_metadata(loc).get("provenance") or {}
        return _Shard(loc.name, loc, meta.num_rows,
                      [meta.row_group(g).num_rows for g in range(meta.num_row_groups)],
                      random_weight_roles(provenance), provenance)

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
        return self.row_groups.get_or_make((shard.name, group, columns),
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

    def page(self, offset: int, limit: int) -> list[dict[str, Any]]:
        """Grid cards of rows offset .. offset + limit − 1, in run order."""
        cards: list[dict[str, Any]] = []
        start = 0
        for shard in self.shards():
            if len(cards) >= limit:
                break
            if offset >= start + shard.rows:
                start += shard.rows
                continue
            first = 0
            for g, n in enumerate(shard.group_rows):
                lo, hi = max(offset, start + first), min(offset + limit, start + first + n)
                if lo < hi:
                    table = self._group(shard, g, grid_columns())
                    texts = table.column("text_png")
                    for k in range(lo - start - first, hi - start - first):
                        cards.append(_card(table, k, shard, first + k,
                                           _text_share(texts[k].as_py())))
                first += n
            start += shard.rows
        return cards

    # -- statistics, filters, sorts -------------------------------------------------------

    def _shard_stats(self, shard: _Shard) -> _Stats:
        cards: list[dict[str, Any]] = []
        names = sort_keys()
        keys = {k: [] for k in names}  # type: dict[str, list[float]]
        words: list[str] = []
        stat_layers = [layer for layer in layers() if layer.statistic_names]
        first = 0
        nan = float("nan")
        for g, n in enumerate(shard.group_rows):
            table = _read_group(shard.location, g, stats_columns())
            lo, hi = table.column("depth_min"), table.column("depth_max")
            for k in range(n):
                card = _card(table, k, shard, first + k,
                             _text_share(table.column("text_png")[k].as_py()))
                cards.append(card)
                dmin, dmax = lo[k].as_py(), hi[k].as_py()
                row = {
                    "image_id": float(card["image_id"]), "people": float(card["people"]),
                    "depth_min": nan if dmin is None else dmin,
                    "depth_max": nan if dmax is None else dmax,
                    "depth_range": nan if dmin is None or dmax is None else dmax - dmin,
                    "tokens": float(len(card["tokens"])),
                    "segments": float(len(table.column("segments")[k].as_py() or [])),
                    "text_regions": float(len(table.column("text_regions")[k].as_py() or [])),
                }
                for layer in stat_layers:
                    stats = layer.statistics({c: table.column(c)[k].as_py()
                                              for c in layer.stat_columns}) or {}
                    row.update({name: stats.get(name, nan) for name in layer.statistic_names})
                for key in names:
                    keys[key].append(row[key])
                caps = (table.column("teacher_captions")[k].as_py() or []) + (
                    table.column("coco_captions")[k].as_py() or [])
                words.append(" ".join([*caps, *card["tokens"]]).lower())
            first += n
        return _Stats(cards, {k: np.asarray(v, np.float64) for k, v in keys.items()}, words)

    def index_step(self) -> bool:
        """Compute the statistics of the next shard that has none; False when there is none
        left. A shard that cannot be read is logged once and skipped; a run that is gone
        stops the indexing (`gone` said so, once)."""
        try:
            todo = [s for s in self.shards()
                    if s.name not in self._stats and s.name not in self._skipped]
        except DistillError:
            return False  # the request that asked says why (a gone run, no shards left)
        if not todo:
            return False
        shard = todo[0]
        try:
            self._stats[shard.name] = self._shard_stats(shard)
        except DistillError as exc:
            if self.gone() is not None:
                return False
            logger.warning("no statistics for shard %s: %s", shard.name, exc)
            self._skipped[shard.name] = str(exc)
        return True

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
        return {"shards": len(shards), "indexed": sum(s.name in self._stats for s in shards),
                "skipped": sum(s.name in self._skipped for s in shards),
                "rows": sum(s.rows for s in shards),
                "indexed_rows": sum(s.rows for s in shards if s.name in self._stats)}

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
        stats = [self._stats[s.name] for s in self.shards() if s.name in self._stats]
        cards = [c for s in stats for c in s.cards]
        if not cards:
            return {"rows": [], "total": 0, "complete": _complete(status),
                    "index": status}
        values = {k: np.concatenate([s.values[k] for s in stats]) for k in sort_keys()}
        words = [w for s in stats for w in s.words]
        keep = np.ones(len(cards), bool)
        if q.group:
            keep &= np.nan_to_num(values[f"group:{q.group}"], nan=-1.0) >= max(q.min_share, 1e-12)
        if q.text_min:
            keep &= np.nan_to_num(values["text_share"], nan=-1.0) >= q.text_min
        if q.people_min:
            keep &= values["people"] >= q.people_min
        if q.people_max is not None:
            keep &= values["people"] <= q.people_max
        if q.word:
            needle = q.word.lower().strip()
            keep &= np.array([needle in w for w in words], bool)
        if q.missing:
            keep &= np.array([not c["teachers"][q.missing] for c in cards], bool)
        if q.quarantined or q.reason:
            bad = self.quarantined()
            stage, reason = q.quarantined, q.reason.lower()

            def hit(image_id: int) -> bool:
                return any((not stage or stage == "any" or s == stage)
                           and (not reason or reason in r.lower())
                           for s, r in bad.get(image_id, ()))

            keep &= np.array([hit(c["image_id"]) for c in cards], bool)
        chosen = np.flatnonzero(keep)
        if q.sort:
            v = values[q.sort][chosen]
            # missing values (a teacher that did not run) last in either order
            v = np.where(np.isnan(v), -np.inf if q.descending else np.inf, v)
            order = np.argsort(-v if q.descending else v, kind="stable")
            chosen = chosen[order]
        page = [cards[i] | {"sort_value": _finite(values[q.sort][i]) if q.sort else None}
                for i in chosen[offset:offset + limit]]
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
