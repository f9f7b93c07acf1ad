"""Filters and sorts of `distill view`'s grid over the per-row statistics
(`distill.view.stats`): `Query` says what the user asked for, `select` picks and orders the
rows, all numpy over the statistics' columns (no Python object per row)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distill.errors import ViewError
from distill.layers.groups import CLASS_GROUPS as CLASS_GROUP_NAMES
from distill.view.stats import TEACHER_COLUMNS, WORDS, sort_keys, teacher_column

__all__ = ["CLASS_GROUP_NAMES", "Query", "select"]


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


def select(q: Query, table: pa.Table,
           quarantined: Callable[[], dict[int, list[tuple[str, str]]]]
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows of `table` (statistics, `distill.view.stats`) that pass `q`, in its order, and
    the sort key's values of all rows (None without a sort). Reads only the columns asked for."""
    def values(name: str) -> np.ndarray:
        return _numpy(table.column(name), np.float64)

    keep = np.ones(table.num_rows, bool)
    if q.group:
        keep &= np.nan_to_num(values(f"group:{q.group}"), nan=-1.0) >= max(q.min_share, 1e-12)
    if q.text_min:
        keep &= np.nan_to_num(values("text_share"), nan=-1.0) >= q.text_min
    if q.people_min or q.people_max is not None:
        people = values("people")
        if q.people_min:
            keep &= people >= q.people_min
        if q.people_max is not None:
            keep &= people <= q.people_max
    if q.word:
        needle = q.word.lower().strip()
        keep &= _numpy(pc.match_substring(table.column(WORDS), needle), np.bool_)
    if q.missing:
        keep &= ~_numpy(table.column(teacher_column(q.missing)), np.bool_)
    if q.quarantined or q.reason:
        bad = quarantined()
        stage, reason = q.quarantined, q.reason.lower()
        hit = {i for i, entries in bad.items()
               if any((not stage or stage == "any" or s == stage)
                      and (not reason or reason in r.lower()) for s, r in entries)}
        ids = values("image_id").astype(np.int64)
        keep &= np.isin(ids, np.fromiter(hit, np.int64, len(hit)))
    chosen = np.flatnonzero(keep)
    if not q.sort:
        return chosen, None
    key = values(q.sort)
    v = key[chosen]
    # missing values (a teacher that did not run) last in either order
    v = np.where(np.isnan(v), -np.inf if q.descending else np.inf, v)
    return chosen[np.argsort(-v if q.descending else v, kind="stable")], key


def _numpy(column: pa.ChunkedArray, dtype: type) -> np.ndarray:
    """A column without nulls (float64 or bool) as one numpy array, read from the chunks'
    buffers: pyarrow's `to_numpy` imports pandas (~2 s and ~25 MiB the first time)."""
    parts = []
    for chunk in column.chunks:
        if pa.types.is_boolean(chunk.type):
            chunk = pc.cast(chunk, pa.uint8())
        width = chunk.type.bit_width // 8
        parts.append(np.frombuffer(chunk.buffers()[1], np.dtype(f"<{'u' if width == 1 else 'f'}"
                                                                 f"{width}"),
                                   len(chunk), chunk.offset * width))
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)
