"""Shard files: their footer metadata, an atomic writer and a checked reader (shard *file* names
belong to `distill.runfolder`, with every other run-file name)."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from distill.errors import ShardError, StorageError
from distill.layers.registry import layers
from distill.provenance import library_versions, random_weight_roles
from distill.shards.rows import (
    SCHEMA_VERSION,
    Sample,
    decode_row,
    encode_sample,
    optional_columns,
    schema,
)
from distill.storage import AtomicOutput, Location, atomic_output

__all__ = [
    "ShardWriter",
    "column_bytes",
    "footer_column_bytes",
    "iter_samples",
    "make_metadata",
    "open_shard",
    "read_metadata",
    "read_shard",
    "shard_identity",
]

logger = logging.getLogger(__name__)

META_PREFIX = "distill."


# ---------------------------------------------------------------------------------------------
# File metadata


def shard_identity(path: Location) -> dict[str, Any]:
    """What names a shard's data wherever it is copied: its path, its file name and the label
    fingerprint in its footer (one label run's shard of one name holds the same rows); and the
    roles whose teacher had random weights (a student trained on it says so when it predicts)."""
    meta = read_metadata(path)
    fingerprint = meta.get("fingerprint")
    return {"path": str(path), "name": path.name,
            "fingerprint": str(fingerprint) if fingerprint is not None else None,
            "random_weights": random_weight_roles(meta.get("provenance") or {})}


def make_metadata(
    fingerprint: str, provenance: dict[str, Any], extra: dict[str, Any] | None = None
) -> dict[str, str]:
    """File-level key/value metadata: schema version, config fingerprint, every teacher's
    provenance, package versions, plus `extra` (all values JSON-encoded)."""
    meta = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fingerprint,
        "provenance": provenance,
        "versions": library_versions(),
        **(extra or {}),
    }
    return {f"{META_PREFIX}{k}": json.dumps(v, sort_keys=True) for k, v in meta.items()}


def read_metadata(path: str | Path | Location) -> dict[str, Any]:
    """The distill metadata of a shard, decoded (reads only the footer)."""
    schema = _open(Location(path)).schema_arrow
    raw = schema.metadata or {}
    out = {}
    for key, value in raw.items():
        k = key.decode()
        if k.startswith(META_PREFIX):
            out[k[len(META_PREFIX):]] = json.loads(value)
    return out


# ---------------------------------------------------------------------------------------------
# Writing and reading


# The image and PNG columns are already compressed: zstd and dictionary encoding on them cost the
# single writer CPU and gain ~0.3 % of bytes. The other columns (ids, captions, polygons,
# keypoints) keep zstd and dictionaries.
def _column_options(schema: pa.Schema) -> tuple[dict[str, str], list[str]]:
    """Per-column compression and the dictionary-encoded columns of `schema`."""
    encoded = {"image", *(c.name for layer in layers() for c in layer.columns if c.encoded)}
    return ({f.name: "none" if f.name in encoded else "zstd" for f in schema},
            [f.name for f in schema if f.name not in encoded])


class ShardWriter:
    """Writes one shard so that it appears under its final name only when complete.

    Rows stream into a hidden temp file (or object) beside the target through
    `distill.storage.atomic_output`; `close()` finishes the file and commits it (rename on a
    disk, completed upload + server-side move on an object store). An exception inside the
    `with` block (or `abort()`) drops the temp: a crash never leaves a partial file under a
    final name. `sha256` and `size` of the committed file are known without reading it back.
    `roles`: the run's teachers, which decide the columns written only where a teacher ran
    (`distill.shards.schema`); a row's value for a column the shard does not have is dropped.
    """

    def __init__(
        self,
        path: str | Path | Location,
        metadata: dict[str, str],
        row_group_size: int = 64,
        compress_level: int = 1,
        roles: Collection[str] = (),
    ) -> None:
        self.path = Location(path)
        self.row_group_size = row_group_size
        self.compress_level = compress_level
        self.rows = 0
        self.sha256 = ""
        self.size = 0
        self._buffer: list[dict[str, Any]] = []
        self._output = atomic_output(self.path)
        sink: AtomicOutput = self._output.__enter__()
        self._sink = sink
        try:
            shard_schema = schema(roles)
            compression, dictionary = _column_options(shard_schema)
            self._writer = pq.ParquetWriter(sink.stream, shard_schema.with_metadata(metadata),
                                            compression=compression,
                                            use_dictionary=dictionary)
        except BaseException:
            self._output.__exit__(*sys.exc_info())
            raise
        self._closed = False

    def write(self, sample: Sample) -> None:
        self.write_row(encode_sample(sample, self.compress_level))

    def write_row(self, row: dict[str, Any]) -> None:
        """Write a row already encoded by `encode_sample` (the pipeline encodes on its CPU
        workers; the writer only appends)."""
        self._buffer.append(row)
        if len(self._buffer) >= self.row_group_size:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            table = pa.Table.from_pylist(self._buffer, schema=self._writer.schema)
            self._writer.write_table(table, row_group_size=self.row_group_size)
            self.rows += len(self._buffer)
            self._buffer = []

    def close(self) -> Location:
        """Finish the file and move it to its final name; returns that location. A failure
        here (a full disk, a lost connection, Ctrl-C) drops the temp and raises."""
        if self._closed:
            return self.path
        self._closed = True
        try:
            self._flush()
            self._close_parquet()
        except BaseException:
            try:
                with contextlib.suppress(Exception):
                    self._close_parquet()
            finally:
                self._output.__exit__(*sys.exc_info())
            raise
        self._output.__exit__(None, None, None)
        self.sha256, self.size = self._sink.sha256, self._sink.size
        logger.debug("committed %s (%d rows)", self.path, self.rows)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far."""
        if self._closed:
            return
        self._closed = True
        try:
            with contextlib.suppress(Exception):
                self._close_parquet()
        finally:
            with contextlib.suppress(_Abort):
                self._output.__exit__(_Abort, _Abort(), None)

    def _close_parquet(self) -> None:
        """Close the ParquetWriter exactly once, before the temp file under it closes: it counts
        as closed even when closing raised (an interrupt in the footer write), or pyarrow's
        finalizer would close it again later onto the closed temp file ("Exception ignored in
        ParquetWriter.__del__ … write to closed file")."""
        if not self._writer.is_open:
            return
        try:
            self._writer.close()
        finally:
            self._writer.is_open = False

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _Abort(Exception):
    """Thrown into the atomic output to drop it."""


def footer_column_bytes(meta: pq.FileMetaData) -> dict[str, int]:
    """Compressed bytes per top-level column of one Parquet file, from its footer."""
    totals: dict[str, int] = defaultdict(int)
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            col = group.column(c)
            totals[col.path_in_schema.split(".")[0]] += col.total_compressed_size
    return dict(totals)


def column_bytes(shard_paths: Iterable[str | Path | Location]) -> tuple[dict[str, int], int]:
    """Compressed bytes per top-level column over all shards, and the row count."""
    totals: dict[str, int] = defaultdict(int)
    rows = 0
    for path in shard_paths:
        meta = _open(Location(path)).metadata
        rows += meta.num_rows
        for name, n in footer_column_bytes(meta).items():
            totals[name] += n
    return dict(totals), rows


def _open(path: Location) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path.open_input())
    except StorageError as exc:
        raise ShardError(f"shard {path} does not exist" if "does not exist" in str(exc)
                         else str(exc)) from exc
    except (OSError, pa.ArrowException) as exc:
        raise ShardError(f"shard {path} is not a readable Parquet file: {exc}") from exc


def open_shard(path: str | Path | Location) -> pq.ParquetFile:
    """Open a shard reading only its footer, checking it is Parquet with the distill schema;
    every error names the file. A shard written before a column of `OPTIONAL_COLUMNS` existed
    opens too (`decode_row` reads the missing column as null)."""
    path = Location(path)
    pf = _open(path)
    arrow = pf.schema_arrow  # (a property that converts the footer's schema at every call)
    names = arrow.names
    expected, optional = schema(None), optional_columns()
    missing = [f.name for f in expected if f.name not in names and f.name not in optional]
    if missing:
        raise ShardError(f"shard {path} does not have the distill schema: missing {missing}")
    for f in expected:
        if f.name not in names:
            continue
        got = arrow.field(f.name).type
        if got != f.type:
            raise ShardError(f"shard {path}: column {f.name!r} is {got}, expected {f.type}")
    return pf


def read_shard(path: str | Path | Location, columns: list[str] | None = None) -> pa.Table:
    """Read a shard, checking its schema against the one distill writes."""
    pf = open_shard(path)
    try:
        return pf.read(columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise ShardError(f"shard {path} cannot be read: {exc}") from exc


def iter_samples(path: str | Path | Location,
                 columns: Sequence[str] | None = None) -> Iterator[Sample]:
    """Decoded samples of a shard, reading one row group at a time (only `columns`, when
    given: the others decode as None)."""
    pf = open_shard(path)
    for group in range(pf.num_row_groups):
        try:
            table = pf.read_row_group(group, columns=list(columns) if columns else None)
        except (OSError, pa.ArrowException) as exc:
            raise ShardError(f"shard {path} cannot be read: {exc}") from exc
        for row in table.to_pylist():
            yield decode_row(row)
